"""The real `python -m agent` process driven over WSS like the control plane will: a deployment
with a secret end to end, and SIGKILL in the middle of a run followed by a restart."""
import time
import uuid

import pytest

from agent import labels as L
from agent import protocol
from tests.dockertools import left_behind, remove_labelled

from .executor.helpers import idle_service, tcp_service
from .link.support import TOKEN, AgentProcess, call, open_link, recv

pytestmark = pytest.mark.docker
SECRET = f"wss-secret-{uuid.uuid4().hex}"


@pytest.fixture
def node(docker_client):
    """A node id for one test; everything labelled with it is removed afterwards."""
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    processes = []

    def start(data_dir):
        process = AgentProcess(data_dir, token=TOKEN, real=True,
                               args=("--node-id", node_id, "--publish-host", "127.0.0.1",
                                     "--stop-grace", "1"))
        processes.append(process)
        return process

    try:
        yield node_id, start
    finally:
        for process in processes:
            process.stop()
        remove_labelled(docker_client, f"{L.NODE}={node_id}")
    assert left_behind(docker_client, f"{L.NODE}={node_id}") == []


def stack(deployment_id, base_image, busybox_image, plugin_image, plugin_params=None):
    return {"deployment_id": deployment_id, "limits": {"cpus": 0.5, "memory_mb": 128}, "steps": [
        {"id": "db", "kind": "service", "image": base_image, "command": tcp_service(0.1),
         "ports": [9000], "readiness": {"type": "tcp", "port": 9000},
         "env": {"PASSWORD": "${secrets.PW}"}},
        {"id": "mk", "kind": "plugin", "image": plugin_image, "depends_on": ["db"], "network": True,
         "params": {"password": "${secrets.PW}", "leak_secrets": True, **(plugin_params or {})}},
        {"id": "web", "kind": "service", "image": busybox_image, "command": idle_service(),
         "depends_on": ["mk"], "ports": [8080], "expose": [8080]},
    ]}


def events_until(ws, predicate, timeout=90):
    """Read frames until an event satisfies `predicate`; returns all events seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = recv(ws, max(0.05, deadline - time.monotonic()))
        if frame.get("type") == protocol.EVENT:
            seen.append(frame)
            if predicate(frame):
                return seen
    raise AssertionError(f"no matching event within {timeout}s; saw {[e['event'] for e in seen]}")


def status_is(deployment_id, status):
    return lambda f: (f["event"] == protocol.DEPLOYMENT_STATUS and f["data"]["deployment_id"] == deployment_id
                      and f["data"]["status"] == status)


def test_a_deployment_over_wss_leaves_no_secret_in_the_data_directory(node, tmp_path, docker_client,
                                                                      base_image, busybox_image,
                                                                      plugin_images):
    node_id, start = node
    data_dir = tmp_path / "data"
    agent = start(data_dir)
    ws, hello = open_link(agent.port, pinned=agent.thumbprint)
    assert hello["node_id"] == node_id and hello["capacity"]["cpus"] >= 1
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    spec = stack(deployment_id, base_image, busybox_image, plugin_images["echo"])
    response = call(ws, "apply-1", protocol.DEPLOYMENT_APPLY, {"deployment": spec, "secrets": {"PW": SECRET}})
    assert response["ok"], response
    seen = events_until(ws, status_is(deployment_id, "ready"))
    ready = seen[-1]["data"]
    stats = call(ws, "stats-1", protocol.STATS_GET)["result"]
    assert stats["allocated"] == {"cpus": 1.0, "memory_mb": 256}  # db and web: 0.5 CPU, 128 MB each
    assert stats["host"]["memory_available"] > 0 and stats["engine"]["ok"]
    assert {c["step_id"] for c in stats["containers"] if c.get("deployment_id") == deployment_id} >= {
        "db", "web"}
    prepull = call(ws, "pull-1", protocol.PLUGINS_PREPULL, {"images": [
        {"image": plugin_images["echo"]}, {"image": "nullops-test/not-there:1"}]})["result"]
    assert prepull["pulled"] == [plugin_images["echo"]] and "not-there" in str(prepull["failed"])
    assert ready["services"]["web"]["ports"]["8080"] > 0
    assert any(e["event"] == protocol.STEP_LOG and "[redacted]" in " ".join(e["data"]["lines"]) for e in seen)
    run = call(ws, "run-1", protocol.RUN_GET, {"run_id": response["result"]["run_id"]})["result"]["run"]
    assert run["status"] == "succeeded"
    assert call(ws, "del-1", protocol.DEPLOYMENT_DELETE, {"deployment_id": deployment_id})["ok"]
    events_until(ws, status_is(deployment_id, "deleted"))
    ws.close()
    assert agent.stop() == 0
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert SECRET.encode() not in content, f"secret in {path}"
            assert TOKEN.encode() not in content, f"token in {path}"
    assert left_behind(docker_client, f"{L.DEPLOYMENT}={deployment_id}") == []


def test_sigkill_in_the_middle_of_a_run_then_restart_converges(node, tmp_path, docker_client, base_image,
                                                               busybox_image, plugin_images):
    node_id, start = node
    data_dir = tmp_path / "data"
    agent = start(data_dir)
    ws, _ = open_link(agent.port, pinned=agent.thumbprint)
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    spec = stack(deployment_id, base_image, busybox_image, plugin_images["sleepy"], {"seconds": 120})
    run_id = call(ws, "apply-1", protocol.DEPLOYMENT_APPLY,
                  {"deployment": spec, "secrets": {"PW": SECRET}})["result"]["run_id"]
    events_until(ws, lambda f: f["event"] == protocol.RUN_PROGRESS and f["data"].get("step_id") == "mk"
                 and f["data"].get("step_status") == "running")
    time.sleep(0.5)  # the plugin container is running now
    agent.proc.kill()
    agent.proc.wait(10)
    assert left_behind(docker_client, f"{L.DEPLOYMENT}={deployment_id}"), "expected objects mid-run"

    restarted = start(data_dir)
    ws, _ = open_link(restarted.port, pinned=agent.thumbprint)
    replayed = events_until(ws, lambda f: f["event"] == protocol.RUN_PROGRESS
                            and f["data"]["run_id"] == run_id and f["data"]["status"] == "interrupted")
    assert any(e["data"].get("step_id") == "db" for e in replayed)  # events from before the kill
    run = call(ws, "run-1", protocol.RUN_GET, {"run_id": run_id})["result"]["run"]
    assert run["status"] == "interrupted" and "Deploy again" in run["error"]
    listed = call(ws, "list-1", protocol.DEPLOYMENT_LIST)["result"]["deployments"]
    assert [(d["deployment_id"], d["status"]) for d in listed] == [(deployment_id, "failed")]
    assert left_behind(docker_client, f"{L.DEPLOYMENT}={deployment_id}") == []
    # The control plane resends it: it comes up this time.
    spec = stack(deployment_id, base_image, busybox_image, plugin_images["echo"])
    again = call(ws, "apply-2", protocol.DEPLOYMENT_APPLY, {"deployment": spec, "secrets": {"PW": SECRET}})
    assert again["ok"], again
    events_until(ws, status_is(deployment_id, "ready"))
    ws.close()


def test_a_run_cut_short_by_sigkill_has_its_plugins_rolled_back_by_the_next_apply(
        node, tmp_path, docker_client, base_image, busybox_image, plugin_images):
    # Issue #14.7: the restarted agent removed the containers but could not run the rollback of
    # a plugin that had made something outside the node (no secrets, no outputs after a restart).
    node_id, start = node
    data_dir = tmp_path / "data"
    agent = start(data_dir)
    ws, _ = open_link(agent.port, pinned=agent.thumbprint)
    deployment_id, key = f"dep-{uuid.uuid4().hex[:6]}", "ab" * 32
    made = {"id": "made", "kind": "plugin", "image": plugin_images["echo"], "rollback": True,
            "params": {"print_outputs": True, "outputs": {"url": "pg://app:${secrets.PW}@db", "rows": 3},
                       "secret_outputs": ["url"]}}
    sleeper = {"id": "sleep", "kind": "plugin", "image": plugin_images["sleepy"], "depends_on": ["made"],
               "params": {"seconds": 120}}
    spec = {"deployment_id": deployment_id, "limits": {"cpus": 0.5, "memory_mb": 128},
            "steps": [made, sleeper]}
    params = {"deployment": spec, "secrets": {"PW": SECRET}, "output_key": key}
    call(ws, "apply-1", protocol.DEPLOYMENT_APPLY, params)
    events_until(ws, lambda f: f["event"] == protocol.RUN_PROGRESS and f["data"].get("step_id") == "sleep"
                 and f["data"].get("step_status") == "running")
    agent.proc.kill()
    agent.proc.wait(10)

    restarted = start(data_dir)
    ws, _ = open_link(restarted.port, pinned=agent.thumbprint)
    spec["steps"][1]["params"]["seconds"] = 0
    assert call(ws, "apply-2", protocol.DEPLOYMENT_APPLY, params)["ok"]
    seen = events_until(ws, status_is(deployment_id, "ready"))
    lines = [line for f in seen if f["event"] == protocol.STEP_LOG and f["data"]["step_id"] == "made"
             for line in f["data"]["lines"]]
    rollback = lines.index("rollback of the run the agent's restart interrupted: done")
    # It ran with the interrupted run's outputs (the secret one redacted), before the step ran anew.
    assert any(line.startswith("outputs:") and '"rows": 3' in line and "[redacted]" in line
               for line in lines[:rollback]), lines
    assert any("action run" in line for line in lines[rollback:])
    call(ws, "del-1", protocol.DEPLOYMENT_DELETE, {"deployment_id": deployment_id})
    events_until(ws, status_is(deployment_id, "deleted"))
    ws.close()


def test_resource_figures_arrive_on_the_link_without_asking(node, tmp_path):
    _node_id, start = node
    agent = start(tmp_path / "data")
    ws, _ = open_link(agent.port, pinned=agent.thumbprint)
    frame = recv(ws, 10)
    while frame.get("type") != protocol.RESOURCES:
        frame = recv(ws, 10)
    host = frame["host"]
    assert host["cpus"] >= 1 and host["memory_total"] > host["memory_available"] > 0
    assert frame["allocated"] == {"cpus": 0, "memory_mb": 0}
    ws.close()


def test_logs_tail_and_follow_over_the_link(node, tmp_path, busybox_image):
    _node_id, start = node
    agent = start(tmp_path / "data")
    ws, _ = open_link(agent.port, pinned=agent.thumbprint)
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    talker = ('trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "line $i ${TOKEN}"; '
              'sleep 0.2; done & wait')
    spec = {"deployment_id": deployment_id, "limits": {"cpus": 0.2, "memory_mb": 32}, "steps": [
        {"id": "talker", "kind": "service", "image": busybox_image, "command": ["sh", "-c", talker],
         "env": {"TOKEN": "${secrets.T}"}, "readiness": {"type": "log", "pattern": "line 1 "}}]}
    assert call(ws, "a", protocol.DEPLOYMENT_APPLY, {"deployment": spec, "secrets": {"T": SECRET}})["ok"]
    events_until(ws, status_is(deployment_id, "ready"))
    tail = call(ws, "t", protocol.LOGS_TAIL, {"deployment_id": deployment_id, "step_id": "talker", "tail": 5})
    assert tail["ok"] and tail["result"]["lines"][0].startswith("line ")
    assert SECRET not in str(tail) and "[redacted]" in tail["result"]["lines"][0]

    followed = call(ws, "f", protocol.LOGS_FOLLOW, {"deployment_id": deployment_id, "step_id": "talker",
                                                      "tail": 0})
    stream_id = followed["result"]["stream_id"]
    lines = []
    deadline = time.monotonic() + 10
    while len(lines) < 3 and time.monotonic() < deadline:
        frame = recv(ws, 5)
        if frame.get("type") == protocol.STREAM and frame["stream_id"] == stream_id:
            lines.extend(frame["lines"])
    assert len(lines) >= 3 and all(line.startswith("line ") for line in lines)
    assert SECRET not in " ".join(lines)
    assert call(ws, "u", protocol.LOGS_UNFOLLOW, {"stream_id": stream_id})["ok"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = recv(ws, 5)
        if frame.get("type") == protocol.STREAM and frame.get("end"):
            assert frame["reason"] == "unfollowed"
            break
    else:
        raise AssertionError("the stream never ended")
    missing = call(ws, "m", protocol.LOGS_FOLLOW, {"deployment_id": deployment_id, "step_id": "ghost"})
    assert not missing["ok"] and missing["error"]["code"] == protocol.NOT_FOUND
    ws.close()
