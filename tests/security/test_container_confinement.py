"""Issue 17 item 2: service containers get a PID limit and no-new-privileges (plugins had a PID
limit only): a fork bomb in a selectable tag stays inside its container. Real engine."""
import uuid

import pytest

from agent import docker_exec
from agent import labels as L
from agent.docker_exec import SERVICE_PIDS_LIMIT, Executor, check_confined
from tests.agent.executor.helpers import dep_id, idle_service, service, spec_for
from tests.dockertools import left_behind, remove_labelled

pytestmark = pytest.mark.docker


@pytest.fixture
def executor(docker_client, test_labels):
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield Executor(docker_client, node_id, labels=test_labels, publish_host="127.0.0.1")
    finally:
        remove_labelled(docker_client, f"{L.NODE}={node_id}")
    assert not left_behind(docker_client, f"{L.NODE}={node_id}")


def test_service_containers_have_a_pid_limit_and_no_new_privileges(docker_client, executor,
                                                                    busybox_image):
    deployment = dep_id()
    spec = spec_for(deployment, service("web", busybox_image))
    container = executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")
    host = docker_client.api.inspect_container(container.id)["HostConfig"]
    assert host["PidsLimit"] == SERVICE_PIDS_LIMIT
    assert host["SecurityOpt"] == ["no-new-privileges:true"]


def test_a_fork_bomb_in_a_service_stays_inside_its_container(docker_client, executor,
                                                             busybox_image, monkeypatch):
    monkeypatch.setattr(docker_exec, "SERVICE_PIDS_LIMIT", 64)  # the same cap, quicker to hit
    deployment = dep_id()
    # Sleeping children pile up until the PID limit stops the forks (cheap on memory).
    bomb = 'trap "exit 0" TERM; while true; do sleep 600 & done'
    spec = spec_for(deployment, service("web", busybox_image))
    container = executor.start_service(spec, spec["steps"][0], {}, ["sh", "-c", bomb], "run-1")
    # busybox sh gives up at the first refused fork ("can't fork"): the container stops,
    # its processes within the cap, and nothing outside it was touched.
    result = docker_client.api.wait(container.id, timeout=30)
    logs = docker_client.api.logs(container.id).decode(errors="replace")
    assert result["StatusCode"] != 0
    assert "can't fork" in logs or "Resource temporarily unavailable" in logs, logs[-500:]
    assert docker_client.api.inspect_container(container.id)["HostConfig"]["PidsLimit"] == 64


def test_the_last_line_of_defence_refuses_a_container_without_them():
    confined = {"NetworkMode": "net", "SecurityOpt": ["no-new-privileges:true"], "PidsLimit": 64}
    check_confined(confined, "net")
    for loose in ({**confined, "SecurityOpt": None}, {**confined, "PidsLimit": None},
                  {**confined, "SecurityOpt": ["seccomp=unconfined"]}):
        with pytest.raises(RuntimeError):
            check_confined(loose, "net")
