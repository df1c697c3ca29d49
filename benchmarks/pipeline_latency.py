"""Pipeline latency: the same small stack brought up and torn down through the agent and by a
plain docker SDK script that starts the same containers in the same dependency order and
notices readiness as soon as the machine allows (the floor).

The stack: a network; `db` (a TCP service, ready when it listens) and `cache` (running) in
parallel; `seed`, a stdin/stdout plugin step that reaches db over the network; `app`, a service
with a published port, ready when it listens. Run from the repository root:

    .venv/bin/python -m benchmarks.pipeline_latency --runs 7

It needs the Docker engine and the local test images (`make images`).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker

from agent import labels as L
from agent.config import Settings
from agent.service import AgentService
from agent.store import EventHub, Store
from tests.agent.conftest import build_image
from tests.agent.executor.helpers import tcp_service

BASE = "nullops-test/base:bookworm"
BUSYBOX = "nullops-test/busybox:latest"
APP = ["sh", "-c", 'trap "exit 0" TERM; mkdir -p /www; echo ok > /www/index.html; '
       'httpd -f -p 8080 -h /www & wait']
CACHE = ["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait']


def stack_spec(deployment_id, echo_image):
    return {"deployment_id": deployment_id, "limits": {"cpus": 1.0, "memory_mb": 256}, "steps": [
        {"id": "db", "kind": "service", "image": BASE, "command": tcp_service(0), "ports": [9000],
         "readiness": {"type": "tcp", "port": 9000}},
        {"id": "cache", "kind": "service", "image": BUSYBOX, "command": CACHE},
        {"id": "seed", "kind": "plugin", "image": echo_image, "depends_on": ["db"], "network": True,
         "params": {"probe": ["db", 9000]}},
        {"id": "app", "kind": "service", "image": BUSYBOX, "command": APP, "depends_on": ["seed", "cache"],
         "ports": [8080], "expose": [8080], "readiness": {"type": "tcp", "port": 8080}},
    ]}


# --- the floor: a plain SDK script ---------------------------------------------------------------
def _wait_tcp(ip, port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{ip}:{port} not ready")


def _ip(container, network):
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def floor_up(client, name, echo_image, labels):
    network = client.networks.create(name, labels=labels, check_duplicate=True)
    common = {"network": name, "labels": labels, "detach": True, "nano_cpus": 1_000_000_000,
              "mem_limit": "256m"}
    # db and cache are independent: started side by side, as the agent does.
    cache = threading.Thread(target=client.containers.run, args=(BUSYBOX, CACHE),
                             kwargs={"name": f"{name}-cache", **common})
    cache.start()
    db = client.containers.run(BASE, tcp_service(0), name=f"{name}-db", **common)
    _wait_tcp(_ip(db, name), 9000, time.monotonic() + 30)
    cache.join()
    api = client.api
    host_config = api.create_host_config(network_mode=name, mem_limit="256m", nano_cpus=500_000_000)
    seed = api.create_container(echo_image, stdin_open=True, labels=labels, host_config=host_config)["Id"]
    sock = api.attach_socket(seed, params={"stdin": 1, "stream": 1})
    api.start(seed)
    payload = json.dumps({"action": "run", "params": {"probe": ["db", 9000]}}).encode()
    sock._sock.sendall(payload)
    sock._sock.shutdown(socket.SHUT_WR)
    sock.close()
    assert api.wait(seed, timeout=60)["StatusCode"] == 0
    json.loads(api.logs(seed, stdout=True, stderr=False))
    api.remove_container(seed, force=True)
    app = client.containers.run(BUSYBOX, APP, name=f"{name}-app", ports={"8080/tcp": ("127.0.0.1", None)},
                                **common)
    _wait_tcp(_ip(app, name), 8080, time.monotonic() + 30)
    return network


def _together(function, items):
    threads = [threading.Thread(target=function, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def floor_down(client, name, labels):
    """The fastest teardown: kill and remove everything at once."""
    containers = client.containers.list(all=True, filters={"label": f"bench={labels['bench']}"})
    _together(lambda c: c.remove(force=True), containers)
    client.networks.get(name).remove()


def floor_down_ordered(client, name, labels):
    """The same teardown the agent does: SIGTERM in reverse dependency order (app, then db and
    cache together), then remove."""
    containers = {c.name.rsplit("-", 1)[1]: c for c in
                  client.containers.list(all=True, filters={"label": f"bench={labels['bench']}"})}
    containers["app"].stop(timeout=1)
    _together(lambda c: c.stop(timeout=1), [containers["db"], containers["cache"]])
    _together(lambda c: c.remove(force=True), containers.values())
    client.networks.get(name).remove()


# --- through the agent ---------------------------------------------------------------------------
def agent_up(agent, spec):
    result = agent.apply({"deployment": spec, "secrets": {}})
    agent.wait_idle(spec["deployment_id"])
    run = agent.store.get_run(result["run_id"])
    assert run["status"] == "succeeded", run


def agent_down(agent, deployment_id):
    agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id)


def timed(fn, *args):
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    client = docker.from_env(timeout=120, max_pool_size=32)
    echo = build_image(client, "echo", BASE)
    node_id = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as data:
        store = Store.open(Path(data))
        settings = Settings(data_dir=Path(data), node_id=node_id, publish_host="127.0.0.1", stop_grace=1,
                            reconcile_interval=3600)
        agent = AgentService(settings, store, EventHub(store), client)
        results = {"floor_up": [], "floor_down": [], "floor_down_ordered": [], "agent_up": [],
                   "agent_down": []}
        for index in range(args.runs + 1):  # the first round warms caches and is not counted
            name = f"bench-{uuid.uuid4().hex[:6]}"
            labels = {"bench": name}
            up, down = timed(floor_up, client, name, echo, labels), timed(floor_down, client, name, labels)
            timed(floor_up, client, name, echo, labels)
            ordered = timed(floor_down_ordered, client, name, labels)
            spec = stack_spec(f"dep-{uuid.uuid4().hex[:6]}", echo)
            a_up, a_down = timed(agent_up, agent, spec), timed(agent_down, agent, spec["deployment_id"])
            if index:
                for key, value in zip(results, (up, down, ordered, a_up, a_down), strict=True):
                    results[key].append(value)
            print(f"run {index}: floor up {up:.3f}s down {down:.3f}s ordered down {ordered:.3f}s | "
                  f"agent up {a_up:.3f}s down {a_down:.3f}s{' (warm-up)' if not index else ''}",
                  file=sys.stderr)
        store.close()
    leftovers = client.containers.list(all=True, filters={"label": f"{L.NODE}={node_id}"})
    assert not leftovers, leftovers
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nPipeline latency, {args.runs} runs, medians ({os.cpu_count()} cores)")
    print("| phase | plain SDK floor | agent | ratio |\n|---|---|---|---|")
    for label, floor_key, agent_key in (
            ("up (API call to ready)", "floor_up", "agent_up"),
            ("teardown, floor kills all at once", "floor_down", "agent_down"),
            ("teardown, floor stops in reverse order like the agent", "floor_down_ordered", "agent_down")):
        floor, agent_time = med[floor_key], med[agent_key]
        print(f"| {label} | {floor:.3f} s | {agent_time:.3f} s | {agent_time / floor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
