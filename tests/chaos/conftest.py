"""The chaos suite's parts: the real agent process and the controller of tests/controller (in this
process, or as `nullops controller` processes), real PostgreSQL, Docker and Caddy; pipelines of
busybox services and the echo test plugin; `make_deployment` from tests/controller. The figures
go through tests/chaos/harness.py."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import TestConfig
from app.services import deployments as deployment_service
from tests.agent.conftest import plugin_images  # noqa: F401 - fixture
from tests.conftest import PG_URL
from tests.controller.conftest import (  # noqa: F401 - fixtures
    add_node,
    agents,
    caddy,
    catalog,
    controller,
    deployment_row,
    environment,
    make_deployment,
    wait_for_status,
    web,
    web_step,
)

TOKEN = "node-token-chaos-suite-0001"
NULLOPS = str(Path(sys.executable).with_name("nullops"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/chaos/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def linked(agents, add_node, controller, busybox_image):  # noqa: F811 - fixtures from tests/controller
    """A real agent, its node online under an in-process controller: (agent, node id, controller)."""
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    return agent, node_id, active


@pytest.fixture
def ingress(app, caddy, web, monkeypatch):  # noqa: F811 - fixtures from tests/caddytools
    """A real Caddy the in-process controller keeps the routes of (set before it starts)."""
    monkeypatch.setitem(app.config, "NULLOPS_CADDY_ADMIN_URL", caddy.admin_url)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_LISTEN", caddy.listen)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_PAGES_UPSTREAM", web)
    return caddy


def routes(caddy):  # noqa: F811 - a CaddyProcess, not the fixture
    """The hosts NullOps's map in Caddy routes to a service."""
    from app.ingress import caddy as caddy_api

    return sorted(m["input"] for m in caddy.config(f"/id/{caddy_api.MAP_ID}/mappings") or [])


def request_delete(deployment_id, reason="chaos"):
    """What the web tier does when a user deletes (or cancels) a deployment."""
    deployment_service.request_delete(None, deployment_row(deployment_id), reason)


# --- pipelines ------------------------------------------------------------------------------------
def plugin_step(registry_id, step_id, image, params=None, depends_on=(), rollback=False):
    """A plugin step as the resolved graph has it (app/services/specs.py); image local."""
    name, _, tag = image.partition(":")
    return {"id": step_id, "kind": "plugin", "plugin": step_id, "registry_id": registry_id,
            "image": name, "tag": tag or "latest", "params": params or {}, "cpus": 0.25,
            "memory_mb": 64, "timeout_s": 120, "network": True, "rollback": rollback,
            "depends_on": list(depends_on)}


def three_steps(registry_id, echo_image, db_delay=0.0, plugin_sleep=0.0):
    """db (a service, ready when it listens) -> seed (the echo plugin, its output used below) ->
    web (exposed): a run with several points to be cut at."""
    return [
        web_step(registry_id, "db", command=("sh", "-c", f"sleep {db_delay:.2f}; exec httpd -f -p 5432"),
                 port=5432, exposed_ports=[]),
        plugin_step(registry_id, "seed", echo_image, {"sleep": round(plugin_sleep, 2),
                                                      "outputs": {"token": "from-seed"}},
                    depends_on=["db"]),
        web_step(registry_id, "web", env={"SEED_TOKEN": "${steps.seed.outputs.token}"},
                 depends_on=["seed"]),
    ]


def failing(registry_id):
    """A service that exits at once after another became ready: the run fails and rolls back."""
    return [web_step(registry_id),
            web_step(registry_id, "broken", command=("sh", "-c", "exit 3"), port=9000, exposed_ports=[],
                     depends_on=["web"])]


def slow(registry_id, sleepy_image, seconds=120):
    """A run that stays in its plugin step for a while (to be cancelled, or cut in the middle)."""
    return [web_step(registry_id),
            plugin_step(registry_id, "wait", sleepy_image, {"seconds": seconds}, depends_on=["web"])]


# --- controllers as processes ------------------------------------------------------------------
class ControllerProcess:
    """`nullops controller` with its log in a file; `active` once it took the leader lock."""

    def __init__(self, env, log_path):
        self.log_path = log_path
        self.log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([NULLOPS, "controller"], env=env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        self.frozen = False

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    @property
    def active(self):
        return "this controller is now the active one" in self.log

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        if self.frozen and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self):
        self.thaw()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_file.close()


@pytest.fixture
def controller_processes(app, tmp_path):
    """start() -> a new `nullops controller` process against the test's database (it imports this
    tree: PYTHONPATH is passed on). All are stopped (thawed first) at the end."""
    if not PG_URL:
        pytest.skip("needs PostgreSQL (NULLOPS_TEST_DATABASE_URL): the leader lock is PostgreSQL's")
    config = TestConfig(database_url=app.config["SQLALCHEMY_DATABASE_URI"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update(NULLOPS_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
               NULLOPS_SECRET_KEY=__import__("base64").b64encode(config.NULLOPS_MASTER_KEY).decode(),
               NULLOPS_SESSION_SECRET=config.SECRET_KEY,
               # Not Caddy's default admin address: another run's Caddy may be there.
               NULLOPS_CADDY_ADMIN_URL="",
               NULLOPS_CONTROLLER_INTERNAL="127.0.0.1:0")
    started = []

    def start():
        process = ControllerProcess(env, tmp_path / f"controller-{len(started) + 1}.log")
        started.append(process)
        return process

    start.started = started
    try:
        yield start
    finally:
        for process in started:
            process.stop()


def wait_active(processes, timeout):
    """The process that took the leader lock, and seconds it took."""
    started = time.monotonic()
    while True:
        active = [p for p in processes if p.proc.poll() is None and not p.frozen and p.active]
        if active:
            return active[0], time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None, time.monotonic() - started
        time.sleep(0.05)
