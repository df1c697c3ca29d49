"""Issue 17 item 6: the agent port holds a bounded number of connections; past the cap a new
one is closed at once instead of taking a thread for its handshake."""
import socket
import time

import pytest
from flask import Flask

from agent import server as agent_server


class _Links:
    def stop(self):
        pass


@pytest.fixture
def capped_server(monkeypatch):
    monkeypatch.setattr(agent_server, "MAX_CONNECTIONS", 3)
    app = Flask("agent-under-test")
    app.extensions["nullops_agent_links"] = _Links()
    server = agent_server.AgentServer(app, "127.0.0.1", 0, None).start()
    try:
        yield server
    finally:
        server.stop()


def _connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(1.0)
    return sock


def _closed_by_server(sock):
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False  # still open: the server is waiting for this connection's request
    except ConnectionResetError:
        return True


def test_connections_past_the_cap_are_closed_at_once_and_a_freed_slot_is_reused(capped_server):
    held = [_connect(capped_server.port) for _ in range(3)]
    try:
        time.sleep(0.3)  # the accept loop has taken their slots
        extra = _connect(capped_server.port)
        assert _closed_by_server(extra)
        extra.close()
        assert not _closed_by_server(held[0])  # the ones within the cap are served
        held.pop().close()
        time.sleep(0.3)  # the closed connection's thread gives its slot back
        again = _connect(capped_server.port)
        held.append(again)
        assert not _closed_by_server(again)
    finally:
        for sock in held:
            sock.close()
