"""Fixtures for pipeline and service tests: the real executor, store and event hub."""
import json
import threading

import pytest

from agent.config import Settings
from agent.service import AgentService
from agent.store import EventHub, Store


@pytest.fixture
def make_agent(tmp_path, make_executor, docker_client):
    """An AgentService with its own node id, data dir and store (not started unless asked)."""
    agents = []

    def make(start=False, reconcile_interval=3600.0, node_id=None, data_dir=None):
        executor = make_executor(publish_host="127.0.0.1", stop_grace_s=1, node_id=node_id)
        data_dir = data_dir or tmp_path / executor.node_id
        data_dir.mkdir(exist_ok=True)
        settings = Settings(data_dir=data_dir, node_id=executor.node_id, publish_host="127.0.0.1",
                            stop_grace=1, reconcile_interval=reconcile_interval)
        store = Store.open(data_dir)
        service = AgentService(settings, store, EventHub(store), docker_client, executor=executor)
        agents.append(service)
        if start:
            service.start()
        return service

    try:
        yield make
    finally:
        for agent in agents:
            agent.stop(timeout=30)
            agent.store.close()


@pytest.fixture
def agent(make_agent):
    return make_agent()


def run_to_end(agent, params, timeout=120):
    """Apply a deployment and wait for its run; returns the stored run."""
    result = agent.apply(params)
    agent.wait_idle(params["deployment"]["deployment_id"], timeout)
    return agent.store.get_run(result["run_id"])


def events(agent, name=None):
    found = [(e["event"], e["data"]) for e in agent.store.events_after(0, limit=100000)]
    return [data for event, data in found if name is None or event == name]


def wait_for(predicate, timeout=30, interval=0.1):
    done = threading.Event()
    deadline = timeout / interval
    for _ in range(int(deadline)):
        value = predicate()
        if value:
            return value
        done.wait(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def dump(obj):
    return json.dumps(obj, indent=1, default=str)
