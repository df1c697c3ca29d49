"""Real agents on loopback ports and the real controller, in this process or as processes."""
import re
import socket
import time
import uuid

import pytest

from agent.protocol import verifier_for
from app.controller import Controller
from app.extensions import db
from app.models import Environment, Node, NodeCommand
from app.models.types import utcnow
from app.services.catalog import keyring
from tests.agent.link.support import AgentProcess
from tests.caddytools import caddy, web  # noqa: F401 - fixtures
from tests.dockertools import left_behind, remove_labelled


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_row(node_id):
    db.session.expire_all()
    return db.session.get(Node, node_id)


def leave_command(node_id, kind, payload):
    """A command for the controller, left as the web tier leaves it; returns its id."""
    command = NodeCommand(node_id=node_id, kind=kind,
                          payload_ciphertext=keyring().encrypt(payload, "node_command.payload"))
    db.session.add(command)
    db.session.commit()
    return command.id


def wait_for_status(node_id, *statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = node_row(node_id)
        if node.status in statuses:
            return node
        time.sleep(0.1)
    node = node_row(node_id)
    raise AssertionError(f"node stayed {node.status} ({node.status_reason}), wanted {statuses}")


@pytest.fixture
def environment(app):
    env = Environment(name=f"env-{uuid.uuid4().hex[:6]}")
    db.session.add(env)
    db.session.commit()
    return env


@pytest.fixture
def agents(tmp_path, docker_client):
    """agents.start(token) -> (process, port); restart(process) keeps data dir and port."""

    class Agents:
        def __init__(self):
            self.running = []
            self.node_ids = []

        def start(self, token, port=None, data_dir=None, node_id=None):
            port = port or free_port()
            node_id = node_id or f"test-{uuid.uuid4().hex[:8]}"
            data_dir = data_dir or tmp_path / f"agent-{port}"
            process = AgentProcess(data_dir, token=token, real=True,
                                   args=("--port", str(port), "--node-id", node_id,
                                         "--publish-host", "127.0.0.1"))
            process.port_number, process.data_dir, process.node_id = port, data_dir, node_id
            self.running.append(process)
            self.node_ids.append(node_id)
            process.wait_for(re.compile(r"listening on https://"))
            return process

        def restart(self, process, token):
            process.stop()
            return self.start(token, port=process.port_number, data_dir=process.data_dir,
                              node_id=process.node_id)

    agents = Agents()
    try:
        yield agents
    finally:
        for process in agents.running:
            process.stop()
        for node_id in agents.node_ids:
            remove_labelled(docker_client, f"org.nullops.node={node_id}")
            assert left_behind(docker_client, f"org.nullops.node={node_id}") == []


@pytest.fixture
def add_node(environment):
    def add(port, token, name=None):
        node = Node(environment_id=environment.id, name=name or f"n{port}", host="127.0.0.1", port=port,
                    verifier_ciphertext=keyring().encrypt(verifier_for(token), "node.verifier"))
        db.session.add(node)
        db.session.commit()
        return node.id

    return add


@pytest.fixture
def controller(app):
    started = []

    def start(poll_s=0.2):
        instance = Controller(app, poll_s=poll_s)
        instance.start()
        started.append(instance)
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()


# --- deployments (tests/controller/test_deployments.py) ------------------------------------------
def web_step(registry_id, step_id="web", command=("httpd", "-f", "-p", "8000"), port=8000, **extra):
    """A service step as app/services/specs.py documents `resolved`: busybox from the Docker Hub
    row (the image is local; the agent's pull is a no-op then), ready when the port listens."""
    return {"id": step_id, "kind": "service", "service": step_id, "registry_id": registry_id,
            "image": "nullops-test/busybox", "tag_mode": "pinned", "tag": "latest", "tag_pattern": None,
            "ports": [port], "exposed_ports": [port], "env": {}, "command": list(command),
            "health_check": {"type": "tcp", "port": port}, "depends_on": [], **extra}


@pytest.fixture
def catalog(environment):
    """The Docker Hub registry row and a project with small limits."""
    from app.models import Project, Registry
    from app.models.registries import DOCKER_HUB_NAME, DOCKER_HUB_URL

    hub = Registry(name=DOCKER_HUB_NAME, url=DOCKER_HUB_URL, is_default=True)
    project = Project(name=f"shop-{uuid.uuid4().hex[:6]}", cpus=0.5, memory_mb=64)
    db.session.add_all([hub, project])
    db.session.commit()
    return {"registry": hub, "project": project, "environment": environment}


@pytest.fixture
def make_deployment(catalog):
    """make(node_id, steps=None, status="pending", secrets={}) -> deployment id; a new pipeline
    version of the catalog's project each time."""
    from app.models import Deployment, PipelineVersion, ProjectSecret
    from app.services.catalog import SECRET_CONTEXT

    project, environment = catalog["project"], catalog["environment"]
    made = []

    def make(node_id, steps=None, status="pending", secrets=None, name=None):
        steps = steps if steps is not None else [web_step(catalog["registry"].id)]
        for secret, value in (secrets or {}).items():
            db.session.add(ProjectSecret(project_id=project.id, name=secret,
                                         value_ciphertext=keyring().encrypt(value, SECRET_CONTEXT)))
        version = PipelineVersion(project_id=project.id, number=len(made) + 1, definition={},
                                  resolved={"steps": steps})
        db.session.add(version)
        db.session.flush()
        deployment = Deployment(
            name=name or f"d{len(made) + 1}-{uuid.uuid4().hex[:4]}", project_id=project.id,
            environment_id=environment.id, node_id=node_id, pipeline_version_id=version.id,
            tags={s["id"]: s["tag"] for s in steps if s["kind"] == "service"},
            cpus=project.cpus, memory_mb=project.memory_mb, status=status,
            deleted_at=utcnow() if status == "deleted" else None)
        db.session.add(deployment)
        db.session.commit()
        made.append(deployment.id)
        return deployment.id

    return make


def deployment_row(deployment_id):
    from app.models import Deployment

    db.session.expire_all()
    return db.session.get(Deployment, deployment_id)


def wait_for_deployment(deployment_id, *statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = deployment_row(deployment_id)
        if deployment.status in statuses:
            return deployment
        time.sleep(0.1)
    deployment = deployment_row(deployment_id)
    raise AssertionError(f"deployment stayed {deployment.status} ({deployment.status_message}), "
                         f"wanted {statuses}")
