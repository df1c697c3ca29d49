"""The controller against real agents: online, offline, trust, tokens, versions."""
import http.server
import re
import signal
import ssl
import threading
import time

import pytest

from agent.protocol import verifier_for
from agent.tls import ensure_certificate
from app.extensions import db
from app.models import AuditEntry, NodeCommand
from app.services.catalog import keyring
from tests.asynctools import run

from .conftest import free_port, leave_command, node_row, wait_for_status

pytestmark = pytest.mark.docker  # the agents drive the local Docker engine

TOKEN = "node-token-controller-test-0001"
OTHER = "node-token-controller-test-0002"


def run_command(node_id, kind, payload, timeout=15):
    """Leave a command for the controller, as the web tier does, and wait until it is done."""
    command_id = leave_command(node_id, kind, payload)
    deadline = time.monotonic() + timeout
    while True:
        db.session.expire_all()
        if db.session.get(NodeCommand, command_id).done_at is not None:
            return db.session.get(NodeCommand, command_id)
        assert time.monotonic() < deadline, f"{kind} not done within {timeout}s"
        time.sleep(0.1)


def test_a_node_goes_online_offline_on_sigkill_and_back(agents, add_node, controller):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    node = wait_for_status(node_id, "online")
    assert node.thumbprint == agent.thumbprint  # pinned at first contact
    assert node.agent_version and node.reported_cpus >= 1 and node.reported_memory_mb > 0
    assert node.last_seen_at is not None

    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    killed = time.monotonic()
    node = wait_for_status(node_id, "offline", timeout=20)
    assert time.monotonic() - killed < 5, "offline should be noticed within seconds"
    assert node.status_reason

    agents.restart(agent, TOKEN)
    wait_for_status(node_id, "online", timeout=30)  # the backoff keeps trying


def test_a_new_certificate_makes_the_node_untrusted_until_approved(agents, add_node, controller):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    pinned = wait_for_status(node_id, "online").thumbprint
    agent.stop()
    for name in ("agent.crt", "agent.key"):
        (agent.data_dir / name).unlink()
    agent = agents.restart(agent, TOKEN)
    node = wait_for_status(node_id, "untrusted", timeout=30)
    assert node.thumbprint == pinned and node.pending_thumbprint == agent.thumbprint != pinned
    assert "approve" in node.status_reason
    assert db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "node.untrusted")).one()
    time.sleep(2)
    assert node_row(node_id).status == "untrusted"  # nothing more happens until an admin acts
    assert agent.log.count("control plane link from") == 0  # not even a handshake

    # An admin compares and approves (the API does exactly this through app.services.nodes).
    node.thumbprint, node.pending_thumbprint = node.pending_thumbprint, None
    node.status, node.status_reason = "offline", "approved"
    db.session.commit()
    assert wait_for_status(node_id, "online").thumbprint == agent.thumbprint


def test_a_wrong_token_never_goes_online(agents, add_node, controller):
    agent = agents.start(OTHER)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    deadline = time.monotonic() + 15
    while "could not prove" not in node_row(node_id).status_reason:
        assert time.monotonic() < deadline, node_row(node_id).status_reason
        time.sleep(0.1)
    assert node_row(node_id).status in ("pending", "offline")
    assert "bad token proof" not in agent.log  # the controller refused first: it sent no proof


def test_rotation_over_the_live_link_then_the_old_token_is_refused(agents, add_node, controller):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    new_token = "node-token-controller-test-rotated"
    node = node_row(node_id)
    node.verifier_ciphertext = keyring().encrypt(verifier_for(new_token), "node.verifier")
    command = run_command(node_id, "rotate_token", verifier_for(new_token))
    assert command.result == "pushed to the agent over the live link"
    assert command.payload_ciphertext is None
    agent.wait_for(re.compile("token verifier rotated"))
    # The agent restarted with its OLD env token keeps the rotated verifier: it links again.
    agent = agents.restart(agent, TOKEN)
    wait_for_status(node_id, "online", timeout=30)


def test_revocation_drops_the_link_and_refuses_reconnects(agents, add_node, controller):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    node = node_row(node_id)
    node.verifier_ciphertext, node.status, node.status_reason = None, "revoked", "revoked by an admin"
    db.session.add(NodeCommand(node_id=node_id, kind="drop_link"))
    db.session.commit()
    agent.wait_for(re.compile("control plane link from .* is down"), timeout=10)
    links_before = agent.log.count("is up")
    time.sleep(2)
    assert agent.log.count("is up") == links_before  # no reconnect attempts
    assert node_row(node_id).status == "revoked"


def test_an_agent_of_another_version_is_incompatible(agents, add_node, controller, monkeypatch):
    import app.controller.links as links

    monkeypatch.setattr(links, "__version__", "9.9.9")
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    node = wait_for_status(node_id, "incompatible")
    assert "differs from the control plane's 9.9.9" in node.status_reason and "upgrade" in node.status_reason


@pytest.mark.parametrize("where,reason", [
    ("nothing", "connection refused"),
    ("http", "not a NullOps agent"),
])
def test_unreachable_and_foreign_endpoints_say_why(add_node, controller, tmp_path, where, reason):
    port = free_port()
    server = None
    if where == "http":  # a TLS server that is not an agent
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key, _pem = ensure_certificate(tmp_path)  # the agent's own self-signed cert maker
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node_id = add_node(port, TOKEN)
        controller()
        deadline = time.monotonic() + 15
        while reason not in node_row(node_id).status_reason:
            assert time.monotonic() < deadline, node_row(node_id).status_reason
            time.sleep(0.1)
        assert node_row(node_id).status == "offline"
    finally:
        if server is not None:
            server.shutdown()


def test_a_plugin_catalog_change_reaches_the_agent_which_prepulls(agents, add_node, controller,
                                                                   busybox_image):
    import json

    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    images = [{"image": busybox_image}, {"image": "nullops-test/no-such-plugin:1"}]
    command = run_command(node_id, "prepull", json.dumps(images), timeout=30)
    assert command.result.startswith("pulled 1, failed 1") and "no-such-plugin" in command.result


def test_live_data_reaches_the_web_tier_through_the_controllers_internal_endpoint(
        app, agents, add_node, controller, busybox_image, monkeypatch):
    import asyncio
    import uuid

    from agent import protocol
    from app.services import live

    monkeypatch.setitem(app.config, "NULLOPS_CONTROLLER_INTERNAL", "127.0.0.1:0")
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")

    stats = live.node_call(node_id, protocol.STATS_GET)
    assert stats["host"]["cpus"] >= 1 and stats["engine"]["ok"]
    with pytest.raises(live.NodeRequestFailed, match="not_found"):
        live.node_call(node_id, protocol.LOGS_TAIL, {"deployment_id": "ghost", "step_id": "x"})
    with pytest.raises(live.NodeRequestFailed, match="not relayed"):
        live.node_call(node_id, protocol.DEPLOYMENT_DELETE, {"deployment_id": "ghost"})

    # A deployment on the agent (sent over the controller's own link, as the lifecycle will).
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    talker = 'trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.1; done & wait'
    spec = {"deployment_id": deployment_id, "limits": {"cpus": 0.2, "memory_mb": 32}, "steps": [
        {"id": "talker", "kind": "service", "image": busybox_image, "command": ["sh", "-c", talker],
         "readiness": {"type": "log", "pattern": "line 1$"}}]}
    link = active.manager.links[node_id]
    apply = asyncio.run_coroutine_threadsafe(
        link.call(protocol.DEPLOYMENT_APPLY, {"deployment": spec, "secrets": {}}), active.manager.loop)
    run_id = apply.result(30)["run_id"]
    deadline = time.monotonic() + 60
    while live.node_call(node_id, protocol.RUN_GET, {"run_id": run_id})["run"]["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    where = live.endpoint()  # read with the app, as the web's view does

    async def follow():
        lines = []
        stream = live.follow_logs(where, node_id, deployment_id, "talker", viewer=None, tail=0)
        async with asyncio.timeout(30):
            async for batch in stream:
                lines.extend(batch)
                if len(lines) >= 5:
                    break
        await stream.aclose()  # the web side goes away: the controller unfollows
        return lines

    lines = run(follow())
    assert all(line.startswith("line ") for line in lines) and len(lines) >= 5
    deadline = time.monotonic() + 10
    while active.manager._streams:
        assert time.monotonic() < deadline, "the follow was not released"
        time.sleep(0.1)


def test_the_internal_endpoint_refuses_strangers_and_replays_and_the_web_says_when_it_is_away(
        app, controller, monkeypatch):
    # Issue #14.8: plain ws:// with a token that never changed: one connection seen was enough
    # to replay it. Now TLS with the certificate the active controller publishes, and a proof of
    # a fresh nonce.
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from agent import protocol
    from app.controller.internal import internal_proof, internal_token
    from app.models import ControllerEndpoint
    from app.services import live

    with pytest.raises(live.LiveDataUnavailable, match="not reachable"):  # no controller yet
        live.node_call(1, protocol.STATS_GET)

    monkeypatch.setitem(app.config, "NULLOPS_CONTROLLER_INTERNAL", "127.0.0.1:0")
    active = controller()
    deadline = time.monotonic() + 10
    while db.session.get(ControllerEndpoint, ControllerEndpoint.ACTIVE, populate_existing=True) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    published = db.session.get(ControllerEndpoint, ControllerEndpoint.ACTIVE)
    assert (published.address, published.thumbprint) == (active.internal.address, active.internal.thumbprint)

    def answered(proof_for):
        with connect(f"wss://{published.address}", ssl=live._client_tls(), proxy=None) as ws:
            assert live._pinned(ws.socket, published.thumbprint)
            nonce = json.loads(ws.recv(5))["nonce"]
            ws.send(json.dumps({"proof": proof_for(nonce)}))
            try:
                return json.loads(ws.recv(5)), nonce
            except ConnectionClosed as closed:
                return closed.rcvd.code, nonce

    token = internal_token(app.config["SECRET_KEY"])
    assert answered(lambda nonce: "guess")[0] == 1008
    ready, seen_nonce = answered(lambda nonce: internal_proof(token, nonce))
    assert ready == {"type": "ready"}
    assert answered(lambda nonce: internal_proof(token, seen_nonce))[0] == 1008  # a replay
    with pytest.raises(live.LiveDataUnavailable, match="offline"):
        live.node_call(424242, protocol.STATS_GET)


def test_an_agent_dying_while_it_syncs_goes_offline_at_once(add_node, controller, tmp_path):
    from tests.agent.link.support import TOKEN as LINK_TOKEN
    from tests.agent.link.support import AgentProcess

    from .conftest import free_port

    port = free_port()
    # A stand-in agent (the link layer is real) whose state.sync does not answer for 30 s.
    agent = AgentProcess(tmp_path / "slow", token=LINK_TOKEN, args=("--port", str(port)))
    try:
        agent.wait_for(re.compile("listening on"))
        node_id = add_node(port, LINK_TOKEN)
        controller()
        wait_for_status(node_id, "online")
        time.sleep(0.5)  # the controller now waits for the sync's answer
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        killed = time.monotonic()
        wait_for_status(node_id, "offline", timeout=10)
        assert time.monotonic() - killed < 5
    finally:
        agent.stop()


def test_a_rotation_that_never_reached_the_agent_goes_out_when_it_is_back(agents, add_node, controller):
    # Issue #14.8: a rotation cut short (the node away, or the link dropping before the answer)
    # left the database with the new verifier and the agent with the old one: offline for good.
    from app.services import nodes

    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    agent.stop()
    wait_for_status(node_id, "offline", timeout=20)
    node, new_token, _command = nodes.rotate_token(None, node_row(node_id))
    time.sleep(2)  # rounds run meanwhile: the rotation waits for the agent
    (command,) = db.session.scalars(db.select(NodeCommand).where(NodeCommand.node_id == node_id)).all()
    assert command.done_at is None

    agent = agents.restart(agent, TOKEN)  # back with the token it had: the rotation never reached it
    wait_for_status(node_id, "online", timeout=30)
    agent.wait_for(re.compile("token verifier rotated"), timeout=15)
    deadline = time.monotonic() + 10  # the controller records it a moment after the agent's answer
    while (done := _fresh(NodeCommand, command.id)).done_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.result == "pushed to the agent over the live link"
    # From now on the new token is the agent's: its old env token keeps the rotated verifier.
    agent = agents.restart(agent, TOKEN)
    wait_for_status(node_id, "online", timeout=30)
    assert "control plane did not accept" not in agent.log


def _fresh(model, row_id):
    db.session.expire_all()
    return db.session.get(model, row_id)
