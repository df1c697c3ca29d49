"""The long-running commands start, serve and stop cleanly as real processes."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.crypto import generate_key

NULLOPS = str(Path(sys.executable).with_name("nullops"))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def process_env(app):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update({
        "NULLOPS_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "NULLOPS_SECRET_KEY": generate_key(),
        "NULLOPS_SESSION_SECRET": "s" * 40,
    })
    return env


def _wait_for(url, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status, response.read()
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {deadline}s")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_web_serves_under_gunicorn_and_stops_on_sigterm(process_env):
    port = _free_port()
    proc = subprocess.Popen([NULLOPS, "web", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                            env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status, body = _wait_for(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and b'"database":"ok"' in body.replace(b" ", b"")
    finally:
        assert _stop(proc) == 0


def test_controller_runs_until_sigterm(process_env):
    proc = subprocess.Popen([NULLOPS, "controller"], env=process_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # its signal handlers are in place once it says it started
            seen.append(line)
            if "controller started" in line:
                break
        assert proc.poll() is None, "".join(seen)
    finally:
        assert _stop(proc) == 0


def test_processes_refuse_to_start_without_a_master_key(process_env):
    del process_env["NULLOPS_SECRET_KEY"]
    for command in (["web"], ["controller"], ["db", "upgrade"]):
        result = subprocess.run([NULLOPS, *command], env=process_env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode != 0
        assert "nullops keys generate" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_the_web_tier_keeps_a_database_connection_per_thread(process_env, monkeypatch):
    # `nullops web --threads N` builds its app with build_app(pool_size=N): with a smaller pool
    # every busy moment opens and closes PostgreSQL connections (docs/benchmarks.md).
    from app.cli import build_app
    from app.extensions import db

    for key, value in process_env.items():
        monkeypatch.setenv(key, value)
    app = build_app(pool_size=12)
    with app.app_context():
        assert db.engine.pool.size() == 12


def test_dev_refuses_to_start_beside_another_holding_its_port(process_env):
    # A second `make run` used to start its agent and controller beside the first one's, then
    # fail on the web port half-way; now it stops first and says what to do.
    env = {**process_env, "NULLOPS_CONTROLLER_INTERNAL": f"127.0.0.1:{_free_port()}",
           "NULLOPS_DEV_AGENT_PORT": str(_free_port())}
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run([NULLOPS, "dev", "--port", str(port)], env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"127.0.0.1:{port} already in use: is another `nullops dev` running?" in result.stderr
    assert "local agent" not in result.stdout and "Traceback" not in result.stderr


def test_nullops_dev_starts_a_helper_that_died_again_and_gives_up_on_one_that_keeps_dying(
        tmp_path, capsys):
    # Issue #14.8: `make run` went on serving after its local agent or Caddy died.
    from app import devstack

    started = []

    def start(command):
        def run():
            started.append(subprocess.Popen(command))
            return started[-1]
        return run

    try:
        steady = devstack.Supervised("local agent", start(["sleep", "60"]), tmp_path / "agent.log")
        first = steady.process
        first.kill()
        first.wait()
        steady.check()
        assert steady.process is not first and steady.process.poll() is None
        assert "the local agent exited (code -9); starting it again" in capsys.readouterr().out

        dying = devstack.Supervised("Caddy ingress", start(["false"]), tmp_path / "caddy.log")
        for _ in range(devstack.Supervised.GIVE_UP_AFTER):
            dying.process.wait()
            dying.check()
        assert dying.process is None
        said = capsys.readouterr().out
        assert "exited 5 times within a minute (last code 1); not starting it again" in said
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_demo_registry_stops_with_nullops_dev_and_nothing_else_does(tmp_path):
    # make run left the registry scripts/demo-images.sh started running after it ended.
    from app import devstack

    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
                      f"http:\n  addr: 127.0.0.1:{_free_port()}\n")
    registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "registry.pid"
        pid_file.write_text(f"{other.pid}\n")   # a pid file naming something else: left alone
        devstack.stop_demo_registry(pid_file)
        assert other.poll() is None and pid_file.exists()
        pid_file.write_text(f"{registry.pid}\n")
        devstack.stop_demo_registry(pid_file)
        assert registry.wait(10) is not None and not pid_file.exists()
    finally:
        for process in (registry, other):
            if process.poll() is None:
                process.kill()
            process.wait()
