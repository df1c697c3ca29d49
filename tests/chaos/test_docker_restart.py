"""Issue 14, chaos: the Docker engine restarted under ready deployments (once, three times in
`make chaos`): dockerd is stopped (SIGTERM: it stops every container, as `systemctl restart
docker` does) and started again the way scripts/docker-engine.sh starts it (no systemd here).
The services come back (the agent's reconcile starts what died), the database's published
ports are the engine's, every service answers on them, and nothing leaks.

It disturbs every other container on this machine, so it runs only with
NULLOPS_CHAOS_DOCKER_RESTART=1 (`make chaos` does not set it: do so when nothing else uses the
engine)."""
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from docker.errors import DockerException

from tests.chaos import harness
from tests.controller.conftest import wait_for_status, web_step

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(os.environ.get("NULLOPS_CHAOS_DOCKER_RESTART") != "1",
                       reason="restarts the Docker engine under every test on this machine: "
                              "set NULLOPS_CHAOS_DOCKER_RESTART=1 when nothing else uses it"),
]
RESTARTS = harness.count(1, 3)
PIDFILE = Path("/var/run/docker.pid")
BACK_WITHIN_S = 60   # the agent's reconcile runs every 10 s; the engine itself takes seconds


def restart_engine(stop_timeout=60):
    """Stop dockerd and start it again as scripts/docker-engine.sh does; seconds it was away."""
    pid = int(PIDFILE.read_text().strip())
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.1)
    PIDFILE.unlink(missing_ok=True)
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "dockerd did not answer within 60 s"
        time.sleep(0.5)
    return time.monotonic() - started


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return "gone"


def _answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500   # busybox httpd without an index: 404 is an answer
    except OSError:
        return False


def test_the_docker_engine_restarted_under_ready_deployments_brings_the_services_back(
        linked, make_deployment, catalog, docker_client):
    agent, node_id, _controller = linked
    _rng, seed = harness.seeded("docker_restart")
    scenario = harness.Scenario("docker_restart", "Restart the Docker engine under ready deployments", seed)
    registry_id = catalog["registry"].id
    audit_before = harness.last_audit_id()
    try:
        made = [make_deployment(node_id, [web_step(registry_id)], name=f"w{n}") for n in range(3)]
        harness.settle({i: ("ready",) for i in made}, 120)
        for number in range(RESTARTS):
            away = restart_engine()
            back = time.monotonic()
            scenario.measure("engine away", away)
            took = _until_consistent(docker_client, agent.node_id, made, BACK_WITHIN_S + 60)
            scenario.iteration(took is not None and took <= BACK_WITHIN_S, took)
            scenario.note(f"restart {number + 1}: engine away {away:.1f} s, services back and "
                          f"consistent {took if took is None else round(took, 1)} s after it answered")
            assert took is not None, "services not back, or the database's ports are not the engine's"
            assert took <= BACK_WITHIN_S, f"services back only {took:.0f} s after the engine"
            del back
        leaked = harness.leaks(docker_client, agent.node_id)
        scenario.leaked += leaked
        assert not leaked, leaked
    finally:
        scenario.link_drops = harness.link_drops(node_id, audit_before)
        scenario.save()
    wait_for_status(node_id, "online")


def _until_consistent(docker_client, node_id, deployment_ids, timeout):
    """Seconds until every deployment is ready in the database, its service runs, the published
    port the database has is the engine's and answers; None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if _consistent(docker_client, node_id, deployment_ids):
                return time.monotonic() - started
        except (DockerException, requests.RequestException):
            pass   # the SDK's pooled connection to the old engine
        time.sleep(0.5)
    return None


def _consistent(docker_client, node_id, deployment_ids):
    if set(harness.statuses(deployment_ids).values()) != {"ready"}:
        return False
    for deployment_id in deployment_ids:
        row = harness.db.session.get(harness.Deployment, deployment_id)
        (container,) = docker_client.containers.list(filters={"label": [
            f"org.nullops.node={node_id}", f"org.nullops.deployment=dep-{deployment_id}"]}) or [None]
        if container is None:
            return False
        engine_port = int(container.ports["8000/tcp"][0]["HostPort"])
        if row.published["web"]["ports"]["8000"] != engine_port or not _answers(engine_port):
            return False
    return True
