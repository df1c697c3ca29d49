"""Reconcile on the real engine: dead services come back, orphans go, the desired state from
the control plane replaces the agent's view, and agents sharing an engine stay apart."""
import uuid

import pytest

from agent import labels as L

from ..executor.helpers import idle_service, tcp_service
from .conftest import run_to_end, wait_for

pytestmark = pytest.mark.docker


def small_stack(deployment_id, base_image, busybox_image):
    return {"deployment_id": deployment_id, "limits": {"cpus": 0.5, "memory_mb": 128}, "steps": [
        {"id": "db", "kind": "service", "image": base_image, "command": tcp_service(0.1),
         "ports": [9000], "readiness": {"type": "tcp", "port": 9000},
         "env": {"PASSWORD": "${secrets.PW}"}},
        {"id": "web", "kind": "service", "image": busybox_image, "command": idle_service(),
         "depends_on": ["db"], "ports": [8080], "expose": [8080]},
    ]}


def containers_of(client, node_id, deployment_id, all_=True):
    return {c.labels[L.STEP]: c for c in client.containers.list(all=all_, filters={"label": [
        f"{L.NODE}={node_id}", f"{L.DEPLOYMENT}={deployment_id}", f"{L.ROLE}={L.ROLE_SERVICE}"]})}


def deploy(agent, base_image, busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    run = run_to_end(agent, {"deployment": small_stack(deployment_id, base_image, busybox_image),
                             "secrets": {"PW": "pw-123"}})
    assert run["status"] == "succeeded", run
    return deployment_id


def test_a_service_removed_behind_the_agents_back_comes_back(agent, docker_client, base_image,
                                                             busybox_image):
    deployment_id = deploy(agent, base_image, busybox_image)
    before = containers_of(docker_client, agent.executor.node_id, deployment_id)
    before["web"].remove(force=True)
    agent.reconcile()
    after = containers_of(docker_client, agent.executor.node_id, deployment_id)
    assert set(after) == {"db", "web"} and after["web"].id != before["web"].id
    assert after["web"].status == "running"
    assert agent.store.get_deployment(deployment_id)["status"] == "ready"


def test_stopped_services_are_started_again_as_after_a_reboot(agent, docker_client, base_image,
                                                              busybox_image):
    deployment_id = deploy(agent, base_image, busybox_image)
    for container in containers_of(docker_client, agent.executor.node_id, deployment_id).values():
        container.stop(timeout=1)
    agent.reconcile()
    states = {k: c.status for k, c in containers_of(docker_client, agent.executor.node_id,
                                                     deployment_id).items()}
    assert states == {"db": "running", "web": "running"}


def test_the_periodic_reconcile_heals_without_being_asked(make_agent, docker_client, base_image,
                                                          busybox_image):
    agent = make_agent(start=True, reconcile_interval=0.5)
    deployment_id = deploy(agent, base_image, busybox_image)
    containers_of(docker_client, agent.executor.node_id, deployment_id)["db"].remove(force=True)
    wait_for(lambda: "db" in containers_of(docker_client, agent.executor.node_id, deployment_id,
                                           all_=False), timeout=20)


def test_without_the_runs_memory_a_missing_service_marks_the_deployment_degraded(
        make_agent, docker_client, base_image, busybox_image, tmp_path):
    first = make_agent()
    deployment_id = deploy(first, base_image, busybox_image)
    containers_of(docker_client, first.executor.node_id, deployment_id)["web"].remove(force=True)
    # A new agent process on the same data dir: secrets and outputs were in memory only.
    second = make_agent(node_id=first.executor.node_id, data_dir=first.settings.data_dir)
    second.reconcile()
    deployment = second.store.get_deployment(deployment_id)
    assert deployment["status"] == "degraded" and "web" in deployment["message"]
    # The control plane's sync brings the secrets back: the service is recreated.
    spec = deployment["spec"]
    result = second.sync({"deployments": [{"deployment": spec, "secrets": {"PW": "pw-123"}}]})
    # Not run again (that would redo its setup steps): the reconcile recreates what it misses.
    assert result["kept"] == result["degraded"] == [deployment_id]
    assert len(second.store._all("SELECT run_id FROM runs WHERE deployment_id = ?", (deployment_id,))) == 1
    second.wait_idle(deployment_id, 60)
    second.reconcile()
    assert "web" in containers_of(docker_client, first.executor.node_id, deployment_id, all_=False)


def test_orphans_with_the_nodes_labels_go_away(agent, docker_client, busybox_image, test_labels):
    node = agent.executor.node_id
    labels = {**test_labels, L.NODE: node, L.DEPLOYMENT: "ghost", L.ROLE: L.ROLE_SERVICE, L.STEP: "x"}
    docker_client.containers.create(busybox_image, ["true"], labels=labels, name=f"orphan-{node}")
    docker_client.networks.create(f"orphan-{node}", labels={**labels, L.ROLE: L.ROLE_NETWORK},
                                  check_duplicate=True)
    agent.reconcile()
    assert docker_client.containers.list(all=True, filters={"label": f"{L.NODE}={node}"}) == []
    assert docker_client.networks.list(filters={"label": f"{L.NODE}={node}"}) == []


def test_two_agents_on_one_engine_never_touch_each_others_objects(make_agent, docker_client,
                                                                  base_image, busybox_image):
    a, b = make_agent(), make_agent()
    spec_id = f"dep-{uuid.uuid4().hex[:6]}"
    for agent in (a, b):  # the same deployment id on both nodes
        run = run_to_end(agent, {"deployment": small_stack(spec_id, base_image, busybox_image),
                                 "secrets": {"PW": "pw"}})
        assert run["status"] == "succeeded", run
    b_before = {k: c.id for k, c in containers_of(docker_client, b.executor.node_id, spec_id).items()}
    a.sync({"deployments": [], "keep": []})  # a's desired state is empty: it deletes its copy
    a.wait_idle(spec_id, 60)
    a.reconcile()
    assert containers_of(docker_client, a.executor.node_id, spec_id) == {}
    b_after = {k: c.id for k, c in containers_of(docker_client, b.executor.node_id, spec_id).items()}
    assert b_after == b_before and len(b_after) == 2
    assert b.store.get_deployment(spec_id)["status"] == "ready"


def test_sync_replaces_the_agents_view_with_the_desired_state(agent, docker_client, base_image,
                                                              busybox_image):
    kept = deploy(agent, base_image, busybox_image)
    dropped = deploy(agent, base_image, busybox_image)
    new_id = f"dep-{uuid.uuid4().hex[:6]}"
    kept_spec = agent.store.get_deployment(kept)["spec"]
    result = agent.sync({"deployments": [
        {"deployment": kept_spec, "secrets": {"PW": "pw-123"}},
        {"deployment": small_stack(new_id, base_image, busybox_image), "secrets": {"PW": "x"}},
    ], "keep": [kept, new_id]})
    assert result["kept"] == [kept] and result["applied"] == [new_id] and result["deleted"] == [dropped]
    for deployment_id in (dropped, new_id):
        agent.wait_idle(deployment_id, 60)
    assert agent.store.get_deployment(dropped) is None
    assert containers_of(docker_client, agent.executor.node_id, dropped) == {}
    assert agent.store.get_deployment(new_id)["status"] == "ready"


def test_applying_a_spec_without_a_service_removes_its_container(agent, docker_client, base_image,
                                                                 busybox_image):
    deployment_id = deploy(agent, base_image, busybox_image)
    smaller = small_stack(deployment_id, base_image, busybox_image)
    smaller["steps"] = smaller["steps"][:1]  # db only
    run = run_to_end(agent, {"deployment": smaller, "secrets": {"PW": "pw-123"}})
    assert run["status"] == "succeeded", run
    assert set(containers_of(docker_client, agent.executor.node_id, deployment_id)) == {"db"}
