"""Real agents on loopback ports and the real controller, in this process or as processes."""
import re
import socket
import time
import uuid

import pytest

from agent.protocol import verifier_for
from app.controller import Controller
from app.extensions import db
from app.models import Environment, Node
from app.services.catalog import keyring
from tests.agent.link.support import AgentProcess
from tests.dockertools import left_behind, remove_labelled


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_row(node_id):
    db.session.expire_all()
    return db.session.get(Node, node_id)


def wait_for_status(node_id, *statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = node_row(node_id)
        if node.status in statuses:
            return node
        time.sleep(0.1)
    node = node_row(node_id)
    raise AssertionError(f"node stayed {node.status} ({node.status_reason}), wanted {statuses}")


@pytest.fixture
def environment(app):
    env = Environment(name=f"env-{uuid.uuid4().hex[:6]}")
    db.session.add(env)
    db.session.commit()
    return env


@pytest.fixture
def agents(tmp_path, docker_client):
    """agents.start(token) -> (process, port); restart(process) keeps data dir and port."""

    class Agents:
        def __init__(self):
            self.running = []
            self.node_ids = []

        def start(self, token, port=None, data_dir=None, node_id=None):
            port = port or free_port()
            node_id = node_id or f"test-{uuid.uuid4().hex[:8]}"
            data_dir = data_dir or tmp_path / f"agent-{port}"
            process = AgentProcess(data_dir, token=token, real=True,
                                   args=("--port", str(port), "--node-id", node_id,
                                         "--publish-host", "127.0.0.1"))
            process.port_number, process.data_dir, process.node_id = port, data_dir, node_id
            self.running.append(process)
            self.node_ids.append(node_id)
            process.wait_for(re.compile(r"listening on https://"))
            return process

        def restart(self, process, token):
            process.stop()
            return self.start(token, port=process.port_number, data_dir=process.data_dir,
                              node_id=process.node_id)

    agents = Agents()
    try:
        yield agents
    finally:
        for process in agents.running:
            process.stop()
        for node_id in agents.node_ids:
            remove_labelled(docker_client, f"org.nullops.node={node_id}")
            assert left_behind(docker_client, f"org.nullops.node={node_id}") == []


@pytest.fixture
def add_node(environment):
    def add(port, token, name=None):
        node = Node(environment_id=environment.id, name=name or f"n{port}", host="127.0.0.1", port=port,
                    verifier_ciphertext=keyring().encrypt(verifier_for(token), "node.verifier"))
        db.session.add(node)
        db.session.commit()
        return node.id

    return add


@pytest.fixture
def controller(app):
    started = []

    def start():
        instance = Controller(app, poll_s=0.2)
        instance.start()
        started.append(instance)
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()
