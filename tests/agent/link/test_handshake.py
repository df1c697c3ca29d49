"""The handshake over real TLS: both sides prove the node token, nothing happens before."""
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from agent import __version__, protocol

from .support import OTHER_TOKEN, TOKEN, ImpostorAgent, client_context, connect, handshake, recv, send


def _get(port, path):
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=client_context(),
                                    timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _closed_with(ws):
    """The close code the agent sent, after any frames still in flight."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=5)
    return closed.value.rcvd.code if closed.value.rcvd else None


def test_healthz_answers_without_auth_and_reveals_nothing_else(agent):
    status, headers, body = _get(agent.port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["Server"] == "nullops-agent"  # no Werkzeug or Python version
    for path in ("/", "/ws", "/healthz/x", "/api"):
        status, _, body = _get(agent.port, path)
        assert status in (400, 404), path
        for private in (agent.node_id, agent.thumbprint, __version__):
            assert private.encode() not in body


def test_good_handshake_gets_hello(agent):
    ws = connect(agent.port)
    try:
        hello = handshake(ws, TOKEN, pinned=agent.thumbprint)
        assert hello == {
            "type": "hello", "agent_version": __version__, "protocol": protocol.PROTOCOL_VERSION,
            "node_id": "node-test", "thumbprint": agent.thumbprint,
            "capacity": {"cpus": psutil.cpu_count(), "memory_bytes": psutil.virtual_memory().total},
            "outbox": agent.store.outbox_id(),
        }
        # The service heard of the peer before the hello (the ingress's rules follow it).
        assert agent.service.link_peers == ["127.0.0.1"]
        # The link is up: a request is answered.
        send(ws, protocol.request(1, "ping"))
        assert recv(ws) == {"type": "response", "id": 1, "ok": True, "result": {"pong": True}}
    finally:
        ws.close()


def test_wrong_token_is_refused_before_anything_else(agent, caplog):
    agent.hub.publish("run.progress", {"run_id": "r1"})  # an event waits in the outbox
    caplog.set_level(logging.INFO, logger="nullops.agent")
    ws = connect(agent.port)
    # An attacker ignores the agent's proof and answers with a proof from the wrong token.
    assert handshake(ws, OTHER_TOKEN, check_agent=False) == {"type": "auth.failed"}
    assert _closed_with(ws) == 1008
    assert agent.service.calls == [] and agent.service.link_peers == []  # no rules for it
    assert "refused a connection from 127.0.0.1: bad token proof" in caplog.text
    assert [e["seq"] for e in agent.store.events_after(0)] == [1]  # nothing was sent or acked


def test_requests_before_the_handshake_are_refused_unanswered(agent, caplog):
    caplog.set_level(logging.INFO, logger="nullops.agent")
    ws = connect(agent.port)
    send(ws, protocol.request(1, "deployment.list"))
    assert recv(ws) == {"type": "auth.failed"}
    assert _closed_with(ws) == 1008
    assert agent.service.calls == []
    assert "expected auth.begin, got 'request'" in caplog.text


def test_agent_with_another_token_fails_the_control_planes_check(start_agent, caplog):
    impostor = start_agent(token=OTHER_TOKEN, name="impostor")
    caplog.set_level(logging.INFO, logger="nullops.agent")
    ws = connect(impostor.port)
    with pytest.raises(ImpostorAgent):
        handshake(ws, TOKEN, pinned=impostor.thumbprint)
    # The impostor got no proof from this side, and says so in its own log.
    assert "did not accept this agent's proof" in caplog.text
    assert impostor.service.calls == []


def test_agent_proof_is_bound_to_the_certificate_thumbprint():
    verifier, cn, an = protocol.verifier_for(TOKEN), protocol.new_nonce(), protocol.new_nonce()
    proof = protocol.agent_proof(verifier, cn, an, "ab" * 32)
    assert protocol.check_agent_proof(verifier, cn, an, "ab" * 32, proof)
    assert not protocol.check_agent_proof(verifier, cn, an, "cd" * 32, proof)  # a relaying endpoint
    assert not protocol.check_agent_proof(verifier, an, cn, "ab" * 32, proof)
    assert not protocol.check_agent_proof(protocol.verifier_for(OTHER_TOKEN), cn, an, "ab" * 32, proof)


def test_token_in_the_url_or_a_header_grants_nothing(agent, caplog):
    caplog.set_level(logging.DEBUG)
    ws = connect(agent.port, path=f"/ws?token={TOKEN}&agent_token={TOKEN}",
                 additional_headers={"Authorization": f"Bearer {TOKEN}"})
    send(ws, protocol.request(1, "deployment.list"))  # as if the URL had authenticated it
    assert recv(ws) == {"type": "auth.failed"}
    assert _closed_with(ws) == 1008
    assert agent.service.calls == []
    # The agent logged the request without its query string (the test client's own debug
    # log, also in caplog, shows the URL). The server's thread writes that line once the
    # connection is over, which may be just after the client saw the close.
    def agent_log():
        return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets"))

    deadline = time.monotonic() + 5
    while '127.0.0.1 "GET /ws" 101' not in agent_log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert '127.0.0.1 "GET /ws" 101' in agent_log()
    assert TOKEN not in agent_log()


def test_protocol_version_mismatch_is_refused_and_logged_as_such(agent, caplog):
    caplog.set_level(logging.INFO, logger="nullops.agent")
    ws = connect(agent.port)
    assert handshake(ws, TOKEN, version=protocol.PROTOCOL_VERSION + 1) == {"type": "auth.failed"}
    assert _closed_with(ws) == 1008
    version = protocol.PROTOCOL_VERSION
    assert f"protocol version '{version + 1}'; this agent speaks {version}" in caplog.text


def test_a_silent_peer_is_refused_after_the_handshake_timeout(agent, caplog, monkeypatch):
    monkeypatch.setattr(protocol, "HANDSHAKE_TIMEOUT_S", 0.3)
    caplog.set_level(logging.INFO, logger="nullops.agent")
    ws = connect(agent.port)
    assert recv(ws) == {"type": "auth.failed"}
    assert _closed_with(ws) == 1008
    assert "no auth.begin within 0.3 s" in caplog.text


def test_a_connection_that_never_starts_tls_does_not_block_others(agent):
    # Werkzeug's own TLS server runs each handshake inside accept(): one idle TCP connection
    # would stall every later one, the control plane's included.
    idle = socket.create_connection(("127.0.0.1", agent.port))
    try:
        time.sleep(0.2)
        started = time.monotonic()
        status, _, _ = _get(agent.port, "/healthz")
        assert status == 200 and time.monotonic() - started < 2
        ws = connect(agent.port)
        assert handshake(ws, TOKEN)["type"] == "hello"
        ws.close()
    finally:
        idle.close()


def test_tls_1_2_is_the_oldest_version_served(agent):
    from agent import tls

    ctx = tls.server_context(agent.data_dir / "agent.crt", agent.data_dir / "agent.key")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as raw:
        with client.wrap_socket(raw) as tls_socket:
            assert tls_socket.version() == "TLSv1.2"
