"""An authenticated link: requests by id, errors, the one-link rule, events, token rotation."""
import logging
import time

import pytest
from websockets.exceptions import ConnectionClosed

from agent import protocol

from .support import OTHER_TOKEN, TOKEN, call, connect, handshake, open_link, recv, send


@pytest.fixture
def link(agent):
    ws, _hello = open_link(agent.port, pinned=agent.thumbprint)
    try:
        yield ws
    finally:
        ws.close()


def test_requests_are_answered_with_their_own_id(agent, link):
    assert call(link, 1, "ping") == {"type": "response", "id": 1, "ok": True, "result": {"pong": True}}
    response = call(link, "req-a", "deployment.list", {"filter": "x"})
    assert response == {"type": "response", "id": "req-a", "ok": True,
                        "result": {"deployments": [], "echo": {"filter": "x"}}}
    # The service saw the delegated call only; ping is the link's own.
    assert agent.service.calls == [("deployment.list", {"filter": "x"})]


def test_unknown_methods_and_malformed_frames_get_errors_and_the_link_stays_up(agent, link):
    link.send("this is not json")
    assert recv(link) == {"type": "response", "id": None, "ok": False,
                          "error": {"code": "bad_request", "message": "frame is not JSON"}}
    link.send("[1, 2]")
    assert recv(link)["error"]["code"] == "bad_request"
    send(link, {"type": "request", "id": 7, "method": "rm -rf", "params": {}})
    assert recv(link) == {"type": "response", "id": 7, "ok": False,
                          "error": {"code": "unknown_method", "message": "unknown method 'rm -rf'"}}
    send(link, {"type": "request", "id": 8, "method": "deployment.list", "params": ["x"]})
    assert recv(link) == {"type": "response", "id": 8, "ok": False,
                          "error": {"code": "bad_request", "message": "params must be a JSON object"}}
    send(link, {"type": "request", "id": [1], "method": "ping"})
    assert recv(link)["id"] is None
    send(link, {"type": "hello"})
    assert recv(link)["error"]["message"] == "expected a request, got 'hello'"
    send(link, {"type": "request", "id": 9, "method": "events.ack", "params": {"seq": "all"}})
    assert recv(link)["error"] == {"code": "bad_request", "message": "seq must be a whole number >= 0"}
    assert call(link, 10, "ping")["result"] == {"pong": True}
    assert agent.service.calls == []


def test_service_errors_keep_their_code_and_crashes_say_nothing(agent, link, caplog):
    caplog.set_level(logging.ERROR, logger="nullops.agent")
    assert call(link, 1, "run.get", {"run_id": "r9"})["error"] == {
        "code": "not_found", "message": "run 'r9' is unknown"}
    assert call(link, 2, "logs.tail", {})["error"] == {
        "code": "engine_unavailable", "message": "Docker engine unreachable while reading logs"}
    auth = {"username": "u", "password": "hunter2-pw"}
    params = {"images": [{"image": "registry.example/p:1", "auth": auth}]}
    assert call(link, 3, "plugins.prepull", params)["error"] == {
        "code": "internal_error", "message": "internal error; see the agent log"}
    # The traceback is in the agent's log, with the secret that the exception carried redacted.
    assert "RuntimeError: pull exploded while using [redacted]" in caplog.text
    assert "hunter2-pw" not in caplog.text
    assert call(link, 4, "ping")["ok"] is True


def test_a_long_call_does_not_block_the_link(agent, link):
    send(link, protocol.request("slow", "stats.get"))
    started = time.monotonic()
    assert call(link, "quick", "ping")["result"] == {"pong": True}
    assert call(link, "list", "deployment.list")["ok"] is True  # another worker serves it
    assert time.monotonic() - started < 1
    agent.service.release.set()
    assert recv(link) == {"type": "response", "id": "slow", "ok": True, "result": {"slow": "done"}}


def test_a_second_authenticated_link_replaces_the_first(agent, link, caplog):
    caplog.set_level(logging.INFO, logger="nullops.agent")
    second, _ = open_link(agent.port)
    try:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                link.recv(timeout=5)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "replaced")
        assert call(second, 1, "ping")["ok"] is True
        assert "a new link from 127.0.0.1 replaces the link from 127.0.0.1" in caplog.text
    finally:
        second.close()


def test_an_unauthenticated_connection_does_not_disturb_the_link(agent, link):
    intruder = connect(agent.port)
    assert handshake(intruder, OTHER_TOKEN, check_agent=False) == {"type": "auth.failed"}
    intruder.close()
    assert call(link, 1, "ping")["ok"] is True


def test_events_wait_in_the_outbox_are_replayed_after_hello_and_forgotten_after_ack(agent):
    for n in range(3):
        agent.hub.publish("run.progress", {"run_id": "r1", "n": n})
    ws, _hello = open_link(agent.port)  # open_link asserts hello came first
    try:
        events = [recv(ws) for _ in range(3)]
        assert [(e["type"], e["seq"], e["event"], e["data"]["n"]) for e in events] == [
            ("event", 1, "run.progress", 0), ("event", 2, "run.progress", 1), ("event", 3, "run.progress", 2)]
        assert all(e["at"].endswith("Z") for e in events)
        assert call(ws, 1, "events.ack", {"seq": 2}) == {
            "type": "response", "id": 1, "ok": True, "result": {}}
        assert [e["seq"] for e in agent.store.events_after(0)] == [3]
    finally:
        ws.close()
    # Unacknowledged events come again on the next link; acknowledged ones do not.
    ws, _hello = open_link(agent.port)
    try:
        assert recv(ws)["seq"] == 3
        assert call(ws, 2, "events.ack", {"seq": 3})["ok"] is True
    finally:
        ws.close()
    ws, _hello = open_link(agent.port)
    try:
        assert call(ws, 3, "ping")["result"] == {"pong": True}
        send(ws, protocol.request(4, "ping"))
        assert recv(ws)["type"] == "response"  # no event came before it
        assert agent.store.events_after(0) == []
    finally:
        ws.close()


def test_events_published_during_the_link_arrive_at_once(agent, link):
    started = time.monotonic()
    seq = agent.hub.publish("deployment.status", {"deployment_id": "d1", "status": "ready"})
    event = recv(link)
    assert time.monotonic() - started < 0.5
    assert (event["seq"], event["event"], event["data"]) == (seq, "deployment.status",
                                                            {"deployment_id": "d1", "status": "ready"})
    # Events the service appends straight to the store wake the link too.
    seq = agent.store.append_event("resources", {"host": {}})
    assert recv(link)["seq"] == seq


def test_an_ack_never_drops_events_the_link_has_not_sent(agent, link):
    assert call(link, 1, "events.ack", {"seq": 10**9})["ok"] is True
    seq = agent.hub.publish("run.progress", {"run_id": "r2"})
    assert recv(link)["seq"] == seq
    assert [e["seq"] for e in agent.store.events_after(0)] == [seq]


def test_token_rotation_takes_effect_at_once(agent, link, caplog):
    caplog.set_level(logging.INFO, logger="nullops.agent")
    new_token = "rotated-node-token-5e6f7a8b9c0d1e2f"
    send(link, protocol.request(1, "token.rotate", {"verifier": "not-hex"}))
    assert recv(link)["error"] == {"code": "bad_request",
                                   "message": "verifier must be 64 lowercase hex digits"}
    verifier = protocol.verifier_for(new_token)
    assert call(link, 2, "token.rotate", {"verifier": verifier})["ok"] is True
    assert "token verifier rotated" in caplog.text and verifier not in caplog.text
    # The link that rotated stays up; a new link with the old token is refused ...
    assert call(link, 3, "ping")["ok"] is True
    old = connect(agent.port)
    assert handshake(old, TOKEN, check_agent=False) == {"type": "auth.failed"}
    old.close()
    # ... and the new token works (and replaces the rotating link).
    ws, hello = open_link(agent.port, token=new_token, pinned=agent.thumbprint)
    ws.close()
    assert agent.credentials.verifier == verifier


def test_a_frame_over_the_size_limit_closes_the_link_with_1009(agent, link):
    link.send("x" * (protocol.MAX_FRAME_BYTES + 1))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            link.recv(timeout=5)
    assert closed.value.rcvd.code == 1009
    ws, _ = open_link(agent.port)  # the agent itself is fine
    ws.close()


def test_a_new_link_after_every_event_was_acknowledged_waits_instead_of_spinning(agent, monkeypatch):
    # Issue #14.1: a new link started at seq 0 while the outbox was empty (all acknowledged) but
    # its latest seq above 0, so the events thread re-read the store in a loop at 100 % CPU.
    agent.hub.publish("run.progress", {"run_id": "r1"})
    ws, _hello = open_link(agent.port)
    try:
        assert recv(ws)["seq"] == 1
        assert call(ws, 1, "events.ack", {"seq": 1})["ok"] is True
    finally:
        ws.close()
    reads = []
    events_after = agent.store.events_after
    monkeypatch.setattr(agent.store, "events_after", lambda *a, **k: reads.append(a) or events_after(*a, **k))
    ws, _hello = open_link(agent.port)
    try:
        time.sleep(1.0)
        assert len(reads) <= 3  # the replay, then a wait; the spin made thousands
        seq = agent.hub.publish("run.progress", {"run_id": "r2"})
        event = recv(ws)
        assert event["seq"] == seq == 2  # and a new event still arrives at once
    finally:
        ws.close()


def _controller_link(port):
    """A link that refuses frames over the limit, as the control plane's does (1009)."""
    ws = connect(port, max_size=protocol.MAX_FRAME_BYTES)
    assert handshake(ws, TOKEN)["type"] == protocol.HELLO
    return ws


def test_an_event_too_large_for_a_frame_arrives_cut_and_the_link_stays(agent):
    # Issue #14.2: an 8 MB event closed the link (1009) and, left in the outbox, every next one.
    huge = {"run_id": "r1", "deployment_id": "d1", "step_id": "seed", "lines": ["\u00ff" * 4000] * 2000}
    seq = agent.hub.publish(protocol.STEP_LOG, huge)
    ws = _controller_link(agent.port)
    try:
        event = recv(ws)
        assert event["seq"] == seq and event["data"]["truncated"] is True
        assert event["data"]["step_id"] == "seed" and 0 < len(event["data"]["lines"]) < 2000
        assert call(ws, 1, "ping")["ok"] is True
    finally:
        ws.close()


def test_an_oversized_event_an_older_agent_stored_is_replayed_cut(agent):
    # Before events were bounded, one could sit in the outbox and take down every link.
    data = {"run_id": "r1", "deployment_id": "d1", "step_id": "seed", "lines": ["\u00ff" * 4000] * 2000}
    agent.store._db.execute("INSERT INTO events (event, data, at) VALUES (?, ?, ?)",
                            (protocol.STEP_LOG, protocol.encode(data), "2026-12-01T00:00:00.000Z"))
    ws = _controller_link(agent.port)
    try:
        event = recv(ws)
        assert event["seq"] == 1 and event["data"]["truncated"] is True
        assert protocol.encoded_size(event) <= protocol.FRAME_BUDGET_BYTES
        assert call(ws, 1, "ping")["ok"] is True
    finally:
        ws.close()


def test_an_answer_too_large_for_a_frame_is_an_error_and_the_link_stays(agent):
    ws = _controller_link(agent.port)
    try:
        answer = call(ws, 1, "deployment.list", {"answer_bytes": protocol.MAX_FRAME_BYTES + 10})
        assert answer["ok"] is False and answer["error"]["code"] == "too_large"
        assert call(ws, 2, "ping")["ok"] is True
    finally:
        ws.close()
