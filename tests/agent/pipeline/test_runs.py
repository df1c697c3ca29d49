"""Pipelines on the real engine: fan-out to ready, failures and cancel roll back to nothing."""
import threading
import time
import uuid

import pytest

from agent import labels as L
from agent import protocol

from ..executor.helpers import idle_service, tcp_service
from .conftest import dump, events, run_to_end

pytestmark = pytest.mark.docker


def labelled_objects(client, deployment_id):
    selector = {"label": f"{L.DEPLOYMENT}={deployment_id}"}
    return (client.containers.list(all=True, filters=selector) + client.networks.list(filters=selector)
            + client.volumes.list(filters=selector))


def stack(deployment_id, images, base_image, busybox_image, **overrides):
    """3 services and 2 plugin steps with a fan-out:
        db ──> mkdb ──> api ──┐
        cache ────────────────┴──> check
    """
    steps = {
        "db": {"id": "db", "kind": "service", "image": base_image, "command": tcp_service(0.3),
               "ports": [9000], "readiness": {"type": "tcp", "port": 9000},
               "env": {"DB_PASSWORD": "${secrets.DB_PASSWORD}"}, "memory_mb": 128, "cpus": 0.5},
        "cache": {"id": "cache", "kind": "service", "image": busybox_image, "command": idle_service()},
        "mkdb": {"id": "mkdb", "kind": "plugin", "image": images["echo"], "depends_on": ["db"],
                 "network": True, "rollback": True,
                 "params": {"host": "${services.db.host}", "probe": ["db", 9000],
                            "outputs": {"url": "postgres://app:${secrets.DB_PASSWORD}@db/app"},
                            "secret_outputs": ["url"]}},
        "api": {"id": "api", "kind": "service", "image": busybox_image, "depends_on": ["mkdb"],
                "command": idle_service(), "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}"},
                "ports": [8080], "expose": [8080]},
        "check": {"id": "check", "kind": "plugin", "image": images["echo"],
                  "depends_on": ["api", "cache"], "params": {}},
    }
    for step_id, changes in overrides.items():
        steps[step_id] = {**steps[step_id], **changes}
    return {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 7,
            "limits": {"cpus": 1.0, "memory_mb": 256}, "steps": list(steps.values())}


SECRET = f"s3cret-{uuid.uuid4().hex}"


@pytest.fixture
def images(plugin_images):
    return plugin_images


def test_fan_out_pipeline_runs_to_ready_with_limits_applied(agent, docker_client, images, base_image,
                                                             busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    spec = stack(deployment_id, images, base_image, busybox_image)
    run = run_to_end(agent, {"deployment": spec, "secrets": {"DB_PASSWORD": SECRET}})
    assert run["status"] == "succeeded", dump(run)
    assert {s["step_id"]: s["status"] for s in run["steps"]} == dict.fromkeys(
        ["db", "cache", "mkdb", "api", "check"], "done")
    assert agent.store.get_deployment(deployment_id)["status"] == "ready"

    containers = {c.labels[L.STEP]: c for c in docker_client.containers.list(
        filters={"label": f"{L.DEPLOYMENT}={deployment_id}"})}
    assert set(containers) == {"db", "cache", "api"}  # plugin containers are gone
    db = containers["db"].attrs["HostConfig"]
    assert (db["NanoCpus"], db["Memory"]) == (500_000_000, 128 * 1024 * 1024)
    cache = containers["cache"].attrs["HostConfig"]
    assert (cache["NanoCpus"], cache["Memory"]) == (1_000_000_000, 256 * 1024 * 1024)
    assert db["PortBindings"] in (None, {})             # internal: not published
    assert list(containers["api"].attrs["HostConfig"]["PortBindings"]) == ["8080/tcp"]
    assert not db.get("Privileged") and not db.get("CapAdd") and not db.get("Binds")

    # The plugin reached the database over the deployment network; the output reached api.
    env = containers["api"].attrs["Config"]["Env"]
    assert f"DATABASE_URL=postgres://app:{SECRET}@db/app" in env
    ready = [e for e in events(agent, protocol.DEPLOYMENT_STATUS) if e["status"] == "ready"][-1]
    assert ready["services"]["api"]["ports"]["8080"] > 0
    # Secrets and secret outputs never reach the events or the stored logs.
    assert SECRET not in dump(agent.store.events_after(0, limit=100000))
    assert SECRET not in dump(agent.store.get_run(run["run_id"]))

    agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)
    assert labelled_objects(docker_client, deployment_id) == []
    assert agent.store.get_deployment(deployment_id) is None


@pytest.mark.parametrize("position", ["first", "mkdb", "check"])
def test_failing_plugin_at_each_position_rolls_back_to_nothing(agent, docker_client, images,
                                                                base_image, busybox_image, position):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    if position == "first":  # a root step, failing while db and cache come up beside it
        spec = stack(deployment_id, images, base_image, busybox_image)
        spec["steps"].insert(0, {"id": "first", "kind": "plugin", "image": images["fail"], "params": {}})
        spec["steps"][-1]["depends_on"].append("first")
    else:
        spec = stack(deployment_id, images, base_image, busybox_image,
                     **{position: {"image": images["fail"], "params": {}}})
    run = run_to_end(agent, {"deployment": spec, "secrets": {"DB_PASSWORD": SECRET}})
    assert run["status"] == "failed", dump(run)
    assert f"step {position}" in run["error"] and "exit" in run["error"]
    steps = {s["step_id"]: s["status"] for s in run["steps"]}
    assert steps[position] == "failed"
    assert labelled_objects(docker_client, deployment_id) == []
    if position == "check":  # mkdb ran before the failure: its declared rollback was called
        logs = agent.store.step_logs(run["run_id"], "mkdb")
        assert any("rolling back" in line for line in logs), logs


@pytest.mark.parametrize("change,expected", [
    ({"image": "IMAGE:sleepy", "timeout_s": 1}, "did not finish within 1 s"),
    ({"image": "IMAGE:garbage"}, "not JSON"),
    ({"image": "nullops-test/does-not-exist:1"}, "does-not-exist"),
])
def test_timeout_bad_output_and_missing_image_roll_back(agent, docker_client, images, base_image,
                                                         busybox_image, change, expected):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    if change["image"].startswith("IMAGE:"):
        change = {**change, "image": images[change["image"][6:]]}
    spec = stack(deployment_id, images, base_image, busybox_image, mkdb=change)
    run = run_to_end(agent, {"deployment": spec, "secrets": {"DB_PASSWORD": SECRET}})
    assert run["status"] == "failed"
    assert expected in run["error"], run["error"]
    assert labelled_objects(docker_client, deployment_id) == []


def test_cancel_in_the_middle_of_a_run_removes_everything(agent, docker_client, images, base_image,
                                                          busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    spec = stack(deployment_id, images, base_image, busybox_image,
                 mkdb={"image": images["sleepy"], "params": {"seconds": 60}})
    apply = agent.apply({"deployment": spec, "secrets": {"DB_PASSWORD": SECRET}})
    # Wait until the plugin is running: db is up and the sleepy container exists.
    deadline = time.monotonic() + 60
    while not docker_client.containers.list(filters={"label": [f"{L.DEPLOYMENT}={deployment_id}",
                                                               f"{L.ROLE}={L.ROLE_PLUGIN}"]}):
        assert time.monotonic() < deadline, "the plugin never started"
        time.sleep(0.05)
    started = time.monotonic()
    delete = agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)
    assert time.monotonic() - started < 15
    assert agent.store.get_run(apply["run_id"])["status"] == "cancelled"
    assert agent.store.get_run(delete["run_id"])["status"] == "succeeded"
    assert labelled_objects(docker_client, deployment_id) == []
    assert agent.store.get_deployment(deployment_id) is None


def test_independent_branches_run_in_parallel(agent, images, busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    steps = [{"id": f"p{i}", "kind": "plugin", "image": images["echo"], "params": {"sleep": 1.5}}
             for i in range(3)]
    spec = {"deployment_id": deployment_id, "limits": {"cpus": 1.0, "memory_mb": 256}, "steps": steps}
    started = time.monotonic()
    run = run_to_end(agent, {"deployment": spec, "secrets": {}})
    elapsed = time.monotonic() - started
    assert run["status"] == "succeeded"
    assert elapsed < 1.5 * 3, f"three 1.5 s steps took {elapsed:.1f}s: not parallel"
    agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)


def test_refused_and_broken_specs_never_start_anything(agent, docker_client, busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    base = {"deployment_id": deployment_id, "limits": {"cpus": 1.0, "memory_mb": 256}}
    cases = [
        ({**base, "steps": [{"id": "x", "kind": "service", "image": busybox_image, "privileged": True}]},
         protocol.REFUSED, "privileged"),
        ({**base, "steps": [{"id": "x", "kind": "service", "image": busybox_image,
                             "depends_on": ["ghost"]}]}, protocol.BAD_REQUEST, "missing step"),
        ({**base, "steps": [{"id": "x", "kind": "service", "image": busybox_image,
                             "env": {"A": "${secrets.NOPE}"}}]}, protocol.BAD_REQUEST, "secrets not sent"),
    ]
    for spec, code, message in cases:
        with pytest.raises(protocol.ProtocolError, match=message) as caught:
            agent.apply({"deployment": spec, "secrets": {}})
        assert caught.value.code == code
    assert labelled_objects(docker_client, deployment_id) == []
    assert agent.store.get_deployment(deployment_id) is None


def test_no_secret_reaches_the_data_directory(agent, images, base_image, busybox_image):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    spec = stack(deployment_id, images, base_image, busybox_image,
                 check={"params": {"leak_secrets": True}, "image": images["echo"]})
    spec["steps"][-1]["params"]["token"] = "${secrets.DB_PASSWORD}"
    run = run_to_end(agent, {"deployment": spec, "secrets": {"DB_PASSWORD": SECRET}})
    assert run["status"] == "succeeded", dump(run)
    assert any("[redacted]" in line for line in agent.store.step_logs(run["run_id"], "check"))
    agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)
    agent.store.close()
    for path in agent.settings.data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"secret found in {path}"
    threading.Event().wait(0)


def test_megabytes_of_plugin_stderr_arrive_whole_in_events_that_fit_a_frame(agent, images, busybox_image):
    # Issue #14.2: a plugin's stderr became one step.log event of up to tens of MB on the wire,
    # which the control plane refuses (1009) on every replay.
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    noisy = {"id": "noisy", "kind": "plugin", "image": images["echo"],
             "params": {"stderr_lines": 2000, "line_chars": 1000}}
    spec = {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 1,
            "limits": {"cpus": 1.0, "memory_mb": 256}, "steps": [noisy]}
    run = run_to_end(agent, {"deployment": spec, "secrets": {}})
    assert run["status"] == "succeeded", dump(run)
    logs = [e for e in agent.store.events_after(0, limit=100000) if e["event"] == protocol.STEP_LOG]
    assert len(logs) > 1
    assert all(protocol.encoded_size(e) <= protocol.EVENT_BUDGET_BYTES for e in logs)
    lines = [line for e in logs for line in e["data"]["lines"]]
    numbered = [line for line in lines if line.startswith("line ")]
    assert numbered == [f"line {i}" + "\u00ff" * 1000 for i in range(2000)]  # all of it, in order
    agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)


def test_a_tail_and_a_follow_of_binary_logs_stay_within_a_frame(agent, docker_client, busybox_image):
    # Issue #14.2: logs.tail answered up to 10,000 lines of 16 KiB, six bytes per binary byte.
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    binary = {"id": "binary", "kind": "service", "image": busybox_image,
              "command": idle_service("head -c 3000000 /dev/urandom")}
    spec = {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 1,
            "limits": {"cpus": 1.0, "memory_mb": 256}, "steps": [binary]}
    run = run_to_end(agent, {"deployment": spec, "secrets": {}})
    assert run["status"] == "succeeded", dump(run)
    try:
        lines = agent.logs_tail({"deployment_id": deployment_id, "step_id": "binary", "tail": 10000})["lines"]
        assert protocol.encoded_size({"lines": lines}) <= protocol.FRAME_BUDGET_BYTES
        assert lines[0].startswith("[nullops: ") and "older lines left out" in lines[0]

        frames, ended = [], threading.Event()

        def send(frame):
            frames.append(frame)
            if frame.get("end"):
                ended.set()
            return True

        agent.follow_logs({"deployment_id": deployment_id, "step_id": "binary", "tail": 10000}, send)
        deadline = time.monotonic() + 30
        while sum(len(f.get("lines", [])) for f in frames) < 5000 and time.monotonic() < deadline:
            time.sleep(0.1)
        for stop in list(agent.streams.values()):
            stop.set()
        assert ended.wait(10)
        batches = [f for f in frames if f.get("lines")]
        assert sum(len(f["lines"]) for f in batches) >= 5000
        assert all(protocol.encoded_size(f) <= protocol.FRAME_BUDGET_BYTES for f in batches)
    finally:
        agent.delete({"deployment_id": deployment_id})
        agent.wait_idle(deployment_id, 60)
