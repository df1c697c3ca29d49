"""Fixtures for the first-party plugin tests: the images (tests/plugins/images.py), and a
deployment on a real engine in which services start and plugins run the way the agent runs
them (Executor.start_service, readiness.wait_ready, agent.plugins.run_plugin), all labelled
with the test labels and removed at the end (tests/agent/conftest.py, make_executor)."""
import time
import uuid

import psycopg2
import pytest

from agent import readiness
from agent.plugins import run_plugin
from tests.agent.conftest import cancel, executor, make_executor  # noqa: F401 - fixtures used here
from tests.agent.executor.helpers import plugin, service, spec_for

from .images import build_all

ADMIN_PASSWORD = "Adm1n-p4ss 'quoted' $(not run)"
POSTGRES_READY = {"type": "log", "pattern": "database system is ready to accept connections"}


@pytest.fixture(scope="session")
def images(docker_client, base_image):
    return build_all(docker_client, base_image)


class Deployment:
    """One deployment: its services share a network; plugin steps join it (network: true)."""

    def __init__(self, node, tags, cancel_event):
        self.executor = node
        self.images = tags
        self.cancel = cancel_event
        self.id = f"dep-{uuid.uuid4().hex[:6]}"
        self.runs = 0

    def service(self, step_id, image, env=None, command=None, ports=(), readiness_check=None):
        """Start a service (its ports published on 127.0.0.1) and wait until it is ready."""
        step = service(step_id, image, ports=list(ports), expose=list(ports))
        spec = spec_for(self.id, step)
        container = self.executor.start_service(spec, step, env or {}, command, "run-1")
        readiness.wait_ready(self.executor, container, readiness_check or {"type": "running"},
                             cancel=self.cancel, deadline_s=60)
        return container

    def postgres(self, step_id="db"):
        """The PostgreSQL service image; returns its published port on 127.0.0.1."""
        container = self.service(step_id, self.images["postgres"], env={"POSTGRES_PASSWORD": ADMIN_PASSWORD},
                                 ports=[5432], readiness_check=POSTGRES_READY)
        return self.executor.published_ports(container)[5432]

    def plugin(self, name, params, action="run", secrets=None, timeout_s=60, step_id=None):
        """Run plugin `name` as the agent does; returns its PluginResult (raises PluginError)."""
        self.runs += 1
        step = plugin(step_id or name, self.images[name], network=True, timeout_s=timeout_s)
        spec = spec_for(self.id, step)
        payload = {"action": action, "deployment": {"id": self.id, "name": self.id}, "params": params,
                   "secrets": secrets or {}, "outputs": {}, "services": {}}
        return run_plugin(self.executor, spec, step, payload, run_id=f"run-{self.runs}",
                          cancel=self.cancel, action=action)


@pytest.fixture
def deployment(executor, images, cancel):  # noqa: F811 - the imported fixtures
    return Deployment(executor, images, cancel)


def connect(port, user="postgres", password=ADMIN_PASSWORD, dbname="postgres", wait_s=0):
    """A connection from the test to a PostgreSQL service, through its published port."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password,
                                    dbname=dbname, connect_timeout=5)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def query(port, sql, args=(), **kwargs):
    conn = connect(port, **kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()
