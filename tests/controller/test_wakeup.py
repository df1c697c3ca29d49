"""Instant wake-up (issue 19): with the controller's poll turned off (an hour), a deployment the
web tier creates still reaches the agent, because its commit notifies the controller; after the
listening connection is cut, the controller listens again and the next one does too."""
import time

import pytest
from sqlalchemy import text

from app import wakeup
from app.extensions import db

from .conftest import wait_for_deployment, wait_for_status

TOKEN = "node-token-wakeup-test-000000001"
pytestmark = [pytest.mark.docker, pytest.mark.postgres]
HOUR = 3600.0


def _wait(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_created_deployment_reaches_the_agent_without_the_poll_and_after_the_listener_was_cut(
        app, agents, add_node, controller, make_deployment, busybox_image):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("NOTIFY needs PostgreSQL (NULLOPS_TEST_DATABASE_URL; make test sets it)")
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller(poll_s=HOUR)
    wait_for_status(node_id, "online")
    _wait(lambda: active.listener is not None and active.listener.connects == 1, "never listened")

    first = make_deployment(node_id)
    wait_for_deployment(first, "deploying", "ready", timeout=20)
    assert active.manager.polls == 0, "the poll fired: the wake-up did not do it"
    assert active.listener.notifications >= 1

    # A dropped connection (a database restart, a proxy's idle timeout): it listens again.
    ended = db.session.execute(text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :name AND datname = current_database()"),
        {"name": wakeup.APPLICATION_NAME}).scalar()
    db.session.commit()
    assert ended == 1
    _wait(lambda: active.listener.connects == 2, "did not listen again after the cut")
    second = make_deployment(node_id)
    wait_for_deployment(second, "deploying", "ready", timeout=20)
    assert active.manager.polls == 0
