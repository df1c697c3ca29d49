"""The agent as a real process: first start, restarts, the certificate and the verifier on disk."""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from agent import protocol

from .support import OTHER_TOKEN, REPO, TOKEN, call, connect, handshake, open_link

NEW_TOKEN = "rotated-node-token-1a2b3c4d5e6f7a8b"
NODE_ID = re.compile(r"node id (node-[0-9a-f]{12})")
# The console script from pyproject.toml, installed beside this interpreter.
CONSOLE_SCRIPT = Path(sys.executable).parent / "nullops-agent"


def _run(args, env_token=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    if env_token is not None:
        env["AGENT_TOKEN"] = env_token
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _refused(port, token):
    ws = connect(port)
    try:
        return handshake(ws, token, check_agent=False) == {"type": "auth.failed"}
    finally:
        ws.close()


def _files(data_dir):
    return sorted(p for p in Path(data_dir).rglob("*") if p.is_file())


def test_first_start_without_a_token_exits_2_with_one_line(tmp_path):
    data_dir = tmp_path / "data"
    result = _run([sys.executable, "-m", "agent", "--data-dir", str(data_dir)])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("nullops-agent: AGENT_TOKEN is not set")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert _files(data_dir) == []  # no certificate made for an agent that cannot start


@pytest.mark.parametrize("args", [["--port", "70000"], ["--subnet-pool", "8.8.8.0/24"], ["--frobnicate"]])
def test_bad_settings_exit_2_with_one_line(tmp_path, args):
    result = _run([str(CONSOLE_SCRIPT), "--data-dir", str(tmp_path), *args], env_token=TOKEN)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert result.stderr.startswith("nullops-agent: ") and "Traceback" not in result.stderr


def test_restart_keeps_the_certificate_and_the_rotated_verifier(tmp_path, agent_process):
    data_dir = tmp_path / "data"
    first = agent_process(data_dir, token=TOKEN)
    ws, hello = open_link(first.port, token=TOKEN)
    thumbprint = hello["thumbprint"]
    assert first.thumbprint == thumbprint  # the logged thumbprint is the served certificate's
    assert call(ws, 1, "token.rotate", {"verifier": protocol.verifier_for(NEW_TOKEN)})["ok"] is True
    ws.close()
    assert first.stop() == 0
    assert "SIGTERM received; stopping" in first.log and first.log.rstrip().endswith("stopped")

    # The admin's `docker run` line still says the old token: the rotation must hold.
    second = agent_process(data_dir, token=TOKEN)
    assert second.thumbprint == thumbprint
    assert _refused(second.port, TOKEN)
    ws, hello = open_link(second.port, token=NEW_TOKEN, pinned=thumbprint)
    ws.close()
    # The node id was made on the first start and kept.
    assert hello["node_id"] == first.wait_for(NODE_ID).group(1) == second.wait_for(NODE_ID).group(1)
    assert second.stop() == 0

    # Neither token, nor anything else the agent was given, is in the data directory.
    for path in _files(data_dir):
        content = path.read_bytes()
        for token in (TOKEN, NEW_TOKEN):
            assert token.encode() not in content, f"{path.name} holds a token"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in _files(data_dir)}
    assert modes["agent.key"] == modes["agent.verifier"] == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for secret_log in (first.log, second.log):
        assert TOKEN not in secret_log and NEW_TOKEN not in secret_log


def test_a_token_set_by_hand_replaces_the_stored_verifier(tmp_path, agent_process):
    data_dir = tmp_path / "data"
    first = agent_process(data_dir, token=TOKEN)
    ws, _ = open_link(first.port, token=TOKEN)
    assert call(ws, 1, "token.rotate", {"verifier": protocol.verifier_for(NEW_TOKEN)})["ok"] is True
    ws.close()
    assert first.stop() == 0
    # An admin who lost the rotated token sets a new one in AGENT_TOKEN: it wins.
    second = agent_process(data_dir, token=OTHER_TOKEN)
    assert _refused(second.port, NEW_TOKEN)
    ws, _ = open_link(second.port, token=OTHER_TOKEN)
    ws.close()
    assert second.stop() == 0
    # Without AGENT_TOKEN the stored verifier serves.
    third = agent_process(data_dir, token=None)
    ws, _ = open_link(third.port, token=OTHER_TOKEN)
    ws.close()


def test_deleting_the_certificate_and_key_makes_a_new_thumbprint(tmp_path, agent_process):
    data_dir = tmp_path / "data"
    first = agent_process(data_dir)
    old = first.thumbprint
    ws, _ = open_link(first.port)
    assert first.stop() == 0
    # SIGTERM closes the link with a reason, so the control plane need not wait for a timeout.
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "agent stopping")
    (data_dir / "agent.crt").unlink()
    (data_dir / "agent.key").unlink()
    second = agent_process(data_dir)
    ws, hello = open_link(second.port)
    ws.close()
    assert hello["thumbprint"] == second.thumbprint != old
