"""Two `nullops controller` processes against one PostgreSQL: one is active, and when it dies
the other takes over and the links come back."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import TestConfig
from tests.conftest import PG_URL

from .conftest import node_row, wait_for_status

pytestmark = [pytest.mark.docker, pytest.mark.postgres]
TOKEN = "node-token-failover-test-0001"
NULLOPS = str(Path(sys.executable).with_name("nullops"))


@pytest.fixture
def controllers(app):
    config = TestConfig(database_url=app.config["SQLALCHEMY_DATABASE_URI"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update(NULLOPS_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
               NULLOPS_SECRET_KEY=__import__("base64").b64encode(config.NULLOPS_MASTER_KEY).decode(),
               NULLOPS_SESSION_SECRET=config.SECRET_KEY)
    started = []

    def start():
        process = subprocess.Popen([NULLOPS, "controller"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_one_controller_is_active_and_the_other_takes_over(agents, add_node, controllers):
    if not PG_URL:
        pytest.skip("needs PostgreSQL (NULLOPS_TEST_DATABASE_URL); make test sets it")
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    first = controllers()
    wait_for_status(node_id, "online")
    second = controllers()
    time.sleep(3)
    assert agent.log.count("is up") == 1, "the waiting controller must not link"

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed = time.monotonic()
    deadline = killed + 20
    while agent.log.count("is up") < 2:
        assert time.monotonic() < deadline, agent.log[-2000:]
        time.sleep(0.1)
    took_over = time.monotonic() - killed
    assert took_over < 10, f"takeover took {took_over:.1f}s"
    assert second.poll() is None
    node = wait_for_status(node_id, "online")
    assert node.last_seen_at is not None and node_row(node_id).status == "online"
