"""Service containers: creation, limits, published ports, reuse, teardown, orphans, logs, stats."""
import json
import threading
import time
import urllib.request

import docker
import pytest
from docker.errors import NotFound

from agent import labels as L
from agent.docker_exec import Executor
from agent.errors import AgentError, EngineError
from agent.spec import SpecError

from .helpers import dep_id, httpd_service, idle_service, service, spec_for

pytestmark = pytest.mark.docker


def web(busybox_image, **fields):
    return service("web", busybox_image, ports=[8080, 8081], expose=[8080], **fields)


def test_service_has_limits_grace_labels_and_only_exposed_ports(docker_client, executor, busybox_image):
    deployment = dep_id()
    spec = spec_for(deployment, web(busybox_image, cpus=0.25, memory_mb=64), cpus=2.0, memory_mb=2048)
    container = executor.start_service(spec, spec["steps"][0], {"GREETING": "hello"}, httpd_service(0),
                                       "run-1")

    attrs = docker_client.api.inspect_container(container.id)
    host = attrs["HostConfig"]
    assert attrs["Name"] == f"/nullops-{executor.node_id}-{deployment}-web"
    assert (host["NanoCpus"], host["Memory"]) == (250_000_000, 64 * 1024 * 1024)
    assert attrs["Config"]["StopTimeout"] == 2
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}}
    assert not host["Privileged"] and not host["CapAdd"] and not host["Binds"] and not host["Devices"]
    assert host["Init"] is False
    assert host["NetworkMode"] == executor.network_name(deployment)
    endpoint = attrs["NetworkSettings"]["Networks"][executor.network_name(deployment)]
    assert "web" in endpoint["Aliases"]
    labels = attrs["Config"]["Labels"]
    assert (labels[L.NODE], labels[L.DEPLOYMENT], labels[L.ROLE], labels[L.STEP], labels[L.RUN]) == (
        executor.node_id, deployment, "service", "web", "run-1")
    assert len(labels[L.CONFIG_HASH]) == 64
    assert "GREETING=hello" in attrs["Config"]["Env"]

    # Only `expose` is published, on a random port of publish_host; 8081 stays internal.
    assert list(host["PortBindings"]) == ["8080/tcp"]
    ports = executor.published_ports(container)
    assert list(ports) == [8080] and ports[8080] > 0
    assert attrs["NetworkSettings"]["Ports"].get("8081/tcp") is None
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[8080]}/", timeout=2) as answer:
                assert answer.read() == b"ok\n"
            break
        except OSError:
            assert time.monotonic() < deadline, "httpd never answered on its published port"
            time.sleep(0.05)


def test_deployment_limits_apply_when_the_step_has_none(docker_client, executor, busybox_image):
    spec = spec_for(dep_id(), service("api", busybox_image), cpus=1.5, memory_mb=128)
    container = executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")
    host = docker_client.api.inspect_container(container.id)["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (1_500_000_000, 128 * 1024 * 1024)
    assert host["PortBindings"] == {} or host["PortBindings"] is None


def test_same_config_reuses_the_running_container_and_a_change_recreates_it(executor, busybox_image):
    spec = spec_for(dep_id(), service("api", busybox_image))
    step = spec["steps"][0]
    first = executor.start_service(spec, step, {"A": "1"}, idle_service(), "run-1")
    again = executor.start_service(spec, step, {"A": "1"}, idle_service(), "run-2")
    assert again.id == first.id and again.labels[L.RUN] == "run-1"

    changed = executor.start_service(spec, step, {"A": "2"}, idle_service(), "run-3")
    assert changed.id != first.id and changed.labels[L.RUN] == "run-3"
    assert changed.labels[L.CONFIG_HASH] != first.labels[L.CONFIG_HASH]
    with pytest.raises(NotFound):
        executor.client.containers.get(first.id)

    # Same config but no longer running: recreated, not reused.
    changed.kill()
    revived = executor.start_service(spec, step, {"A": "2"}, idle_service(), "run-4")
    assert revived.id != changed.id and revived.status == "running"


def test_a_service_that_cannot_start_is_an_engine_error_and_leaves_no_container(executor, busybox_image):
    spec = spec_for(dep_id(), service("api", busybox_image))
    with pytest.raises(EngineError) as caught:
        executor.start_service(spec, spec["steps"][0], {}, ["/no/such/program"], "run-1")
    assert caught.value.code == "engine_error" and "/no/such/program" in caught.value.message
    assert executor.service_containers(spec["deployment_id"]) == {}


def test_forbidden_step_keys_are_refused_before_anything_is_created(docker_client, executor, busybox_image):
    deployment = dep_id()
    for key, value in (("privileged", True), ("binds", ["/:/host"]), ("cap_add", ["SYS_ADMIN"]),
                       ("network_mode", "host")):
        spec = spec_for(deployment, service("api", busybox_image, **{key: value}))
        with pytest.raises(SpecError) as caught:
            executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")
        assert caught.value.refused
    assert executor.deployment_ids() == set()


def test_teardown_removes_everything_by_label_and_spares_another_node(docker_client, make_executor,
                                                                      busybox_image):
    deployment = dep_id()  # the same deployment id on two nodes sharing one engine
    mine, other = make_executor(stop_grace_s=1), make_executor(stop_grace_s=1)
    spec = spec_for(deployment, service("db", busybox_image), service("web", busybox_image))
    for executor in (mine, other):
        for step in spec["steps"]:
            executor.start_service(spec, step, {}, idle_service(), "run-1")
    # A volume of the deployment (services never get host mounts; named volumes are labelled).
    docker_client.volumes.create(f"nullops-{mine.node_id}-{deployment}-data",
                                 labels=mine.labels_for(deployment, "volume"))
    # A container no longer in the spec (an old step) must go too: found by label, not config.
    old = spec_for(deployment, service("old-step", busybox_image))
    mine.start_service(old, old["steps"][0], {}, idle_service(), "run-0")

    started = time.monotonic()
    counts = mine.teardown(deployment, order=["web", "db"])
    took = time.monotonic() - started
    assert counts == {"containers": 3, "networks": 1, "volumes": 1}
    assert took < 5, f"graceful teardown took {took:.1f} s"
    node_filter = {"label": f"{L.NODE}={mine.node_id}"}
    assert docker_client.containers.list(all=True, filters=node_filter) == []
    assert docker_client.networks.list(filters=node_filter) == []
    assert docker_client.volumes.list(filters=node_filter) == []

    # The other node's objects for the same deployment id are all still there and running.
    assert {c.status for c in other.service_containers(deployment).values()} == {"running"}
    assert set(other.service_containers(deployment)) == {"db", "web"}
    assert other.find_network(deployment) is not None
    # Tearing down again is fine: nothing left counts as success.
    assert mine.teardown(deployment) == {"containers": 0, "networks": 0, "volumes": 0}


def test_teardown_stops_in_the_given_order(docker_client, make_executor, busybox_image):
    executor = make_executor(stop_grace_s=1)
    deployment = dep_id()
    steps = [service(name, busybox_image) for name in ("db", "api", "web")]
    spec = spec_for(deployment, *steps)
    for step in steps:
        executor.start_service(spec, step, {}, idle_service(), "run-1")
    since = int(time.time()) - 1
    executor.teardown(deployment, order=["web", "api", "db"])
    events = docker_client.events(since=since, until=f"{time.time():.6f}", decode=True,
                                  filters={"event": "die", "label": f"{L.NODE}={executor.node_id}"})
    stopped = [e["Actor"]["Attributes"][L.STEP] for e in events]
    assert stopped == ["web", "api", "db"]


def test_remove_orphans_keeps_only_active_deployments(docker_client, executor, busybox_image):
    keep, drop = dep_id(), dep_id()
    for deployment in (keep, drop):
        spec = spec_for(deployment, service("api", busybox_image))
        executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")
    executor.ensure_network("net-only")  # a network whose deployment has nothing else left
    assert executor.deployment_ids() == {keep, drop, "net-only"}

    assert executor.remove_orphans({keep}) == sorted([drop, "net-only"])
    assert executor.deployment_ids() == {keep}
    assert set(executor.service_containers(keep)) == {"api"}


def test_restart_dead_starts_exited_services_again(executor, busybox_image):
    deployment = dep_id()
    spec = spec_for(deployment, service("api", busybox_image), service("worker", busybox_image))
    api = executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")
    executor.start_service(spec, spec["steps"][1], {}, idle_service(), "run-1")
    api.kill()
    assert executor.restart_dead(deployment) == ["api"]
    assert {s: c.status for s, c in executor.service_containers(deployment).items()} == {
        "api": "running", "worker": "running"}
    assert executor.restart_dead(deployment) == []


def test_logs_tail_and_follow_until_stopped(executor, busybox_image):
    deployment = dep_id()
    spec = spec_for(deployment, service("talker", busybox_image))
    talker = ('trap "exit 0" TERM; for i in 1 2 3; do echo line $i; done; '
              'while true; do echo tick; sleep 0.05; done')
    executor.start_service(spec, spec["steps"][0], {}, ["sh", "-c", talker], "run-1")
    deadline = time.monotonic() + 10
    while len(executor.logs(deployment, "talker")) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert executor.logs(deployment, "talker", tail=200)[:3] == ["line 1", "line 2", "line 3"]
    assert len(executor.logs(deployment, "talker", tail=2)) == 2

    stop = threading.Event()
    seen = []
    started = time.monotonic()
    for line in executor.follow_logs(deployment, "talker", stop):
        seen.append(line)
        if len(seen) == 5:
            stop.set()
    assert time.monotonic() - started < 3 and seen[:5] == ["tick"] * 5

    # A quiet stream also ends promptly when the event is set.
    quiet = spec_for(deployment, service("quiet", busybox_image))
    executor.start_service(quiet, quiet["steps"][0], {}, idle_service(), "run-1")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert list(executor.follow_logs(deployment, "quiet", stop)) == []
    assert time.monotonic() - started < 1.5

    with pytest.raises(AgentError) as caught:
        executor.logs(deployment, "nope")
    assert caught.value.code == "not_found"


def test_stats_and_engine_health(docker_client, executor, busybox_image):
    deployment = dep_id()
    spec = spec_for(deployment, service("busy", busybox_image, memory_mb=64))
    executor.start_service(spec, spec["steps"][0], {}, ["sh", "-c", "while true; do :; done"], "run-1")
    first = executor.container_stats(deployment)
    time.sleep(0.3)
    started = time.monotonic()
    second = executor.container_stats()
    took = time.monotonic() - started
    print(f"\nstats: {json.dumps(second)} in {took * 1000:.0f} ms")
    assert [s["step_id"] for s in first] == ["busy"] and first[0]["cpu_percent"] is None
    (sample,) = second
    assert sample["deployment_id"] == deployment and sample["memory_limit"] == 64 * 1024 * 1024
    assert 0 < sample["memory_usage"] < 64 * 1024 * 1024
    assert sample["cpu_percent"] > 20  # a busy loop
    assert took < 1.5  # one-shot stats still wait for the engine's next 1-second collection

    health = executor.engine_health()
    assert health["ok"] and health["server_version"].startswith("20.10")
    assert health["containers_running"] >= 1

    unreachable = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=2)
    try:
        health = Executor(unreachable, "test-dead").engine_health()
    finally:
        unreachable.close()
    assert health["ok"] is False and "unreachable" in health["error"]
