"""The end-to-end tests' agent: a real agent process started with the token an admin got from
the API."""
import re
import uuid

import pytest

from agent.netguard import NetworkGuard
from tests.agent.link.support import AgentProcess
from tests.dockertools import remove_labelled

POOL = "10.246.0.0/16"


@pytest.fixture
def agent(tmp_path, docker_client):
    """Starts the real agent with a token once the admin has one: agent(token, port) -> process;
    `agent.node_id` is its node id (in the labels of everything it creates)."""
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    started = []

    def start(token, port):
        # With the network isolation a real node has (issue 17 item 1), on a pool of its own.
        process = AgentProcess(tmp_path / "agent", token=token, real=True,
                               args=("--port", str(port), "--node-id", node_id,
                                     "--publish-host", "127.0.0.1", "--network-isolation", "on",
                                     "--subnet-pool", POOL))
        started.append(process)
        process.wait_for(re.compile(r"listening on https://"))
        return process

    start.node_id = node_id
    try:
        yield start
    finally:
        for process in started:
            process.stop()
        remove_labelled(docker_client, f"org.nullops.node={node_id}")
        if started:
            NetworkGuard(POOL).remove()
