"""Issue 5's end-to-end test: the REST API, the real controller, a real agent process, the
real Docker engine and a real registry (Debian's docker-registry with basic auth), then the
CI client (`nullopsctl`) against the same stack over HTTP.

The admin sets up a registry, a pinned and a selectable service, a plugin, a project with a
pipeline and a secret, an environment with a node and two teams; a Full Access user lists tags,
deploys, clones, extends and deletes; the Read-Only user sees everything and is refused every
change; auto-cleanup removes an expired deployment; a project too big for the node fails at
once; shell metacharacters stay data; nothing with NullOps labels is left at the end.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app.controller import Controller
from app.extensions import db
from app.models import Deployment
from app.models.types import utcnow
from tests.agent.conftest import build_image
from tests.dockertools import htpasswd_registry, left_behind
from tests.e2e.support import Caller

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ci-pusher", "registry-Pass-9"
WEB_TAGS = ("features-login", "features-cart", "v1.0", "release-2")
READY_TIMEOUT_S = 120


@pytest.fixture
def registry(tmp_path, docker_client, busybox_image, base_image):
    """The registry with the busybox image as shop/web (several tags) and shop/db:1.0, and the
    echo test plugin as plugins/echo:1.0."""
    echo = build_image(docker_client, "echo", base_image)
    with htpasswd_registry(tmp_path, USER, PASSWORD) as address:
        pushes = [(busybox_image, f"{address}/shop/web", tag) for tag in WEB_TAGS]
        pushes += [(busybox_image, f"{address}/shop/db", "1.0"), (echo, f"{address}/plugins/echo", "1.0")]
        for source, repository, tag in pushes:
            docker_client.images.get(source).tag(repository, tag)
            for line in docker_client.api.push(repository, tag=tag, stream=True, decode=True,
                                               auth_config={"username": USER, "password": PASSWORD}):
                assert "error" not in line, line
        try:
            yield address
        finally:
            for _source, repository, tag in pushes:
                try:
                    docker_client.images.remove(f"{repository}:{tag}", noprune=True)
                except Exception:  # noqa: BLE001 - another test may use the same image id
                    pass


@pytest.fixture
def controller(app):
    app.config["NULLOPS_CLEANUP_INTERVAL_S"] = 1
    instance = Controller(app, poll_s=0.2)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def live_server(app):
    """The web app over real HTTP on loopback, for the CLI client."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def wait_for(caller, deployment_id, *statuses, timeout=READY_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        deployment = caller("GET", f"/deployments/{deployment_id}")
        if deployment["status"] in statuses:
            return deployment
        assert deployment["status"] not in ("failed", "cleanup_failed") or "failed" in statuses, (
            deployment["status_message"])
        assert time.monotonic() < deadline, f"still {deployment['status']}: {deployment}"
        time.sleep(0.3)


def containers_of(docker_client, node_id, deployment_id):
    # Both labels: another test run on this engine has its own database and its own dep-1.
    selectors = [f"org.nullops.node={node_id}", f"org.nullops.deployment=dep-{deployment_id}"]
    return docker_client.containers.list(all=True, filters={"label": selectors})


def test_issue_5_end_to_end(app, client, make_user, admin, bearer, registry, agent, controller,
                            live_server, docker_client, tmp_path):
    as_admin = Caller(client, bearer(admin))
    marker = tmp_path / "shell-ran"
    sneaky = f"$(touch {marker}); `touch {marker}` | touch {marker}\n-rf"

    # --- the admin describes the product once ---------------------------------------------
    reg = as_admin("POST", "/registries", {"name": "local", "url": f"http://{registry}",
                                           "username": USER, "password": PASSWORD}, status=201)
    as_admin("POST", "/services", {
        "name": "db", "registry_id": reg["id"], "image": "shop/db", "tag_mode": "pinned",
        "tag": "1.0", "ports": [5432], "command": ["httpd", "-f", "-p", "5432"],
        "health_check": {"type": "tcp", "port": 5432}}, status=201)
    as_admin("POST", "/services", {
        "name": "web", "registry_id": reg["id"], "image": "shop/web", "tag_mode": "selectable",
        "tag_pattern": "features-*", "ports": [8000], "exposed_ports": [8000],
        "command": ["httpd", "-f", "-p", "8000"], "env": {"SNEAKY": sneaky},
        "health_check": {"type": "tcp", "port": 8000}}, status=201)
    as_admin("POST", "/plugins", {
        "name": "seed", "registry_id": reg["id"], "image": "plugins/echo", "tag": "1.0",
        "params_schema": {"type": "object", "required": ["greeting"],
                          "properties": {"greeting": {"type": "string"}}},
        "cpus": 0.5, "memory_mb": 128, "timeout_s": 60, "network": True}, status=201)
    # A quarter CPU: admission also wants it free right now (the agent's 15 s average), and the
    # suite keeps this 2-core machine busy.
    project = as_admin("POST", "/projects", {"name": "shop", "cpus": 0.25, "memory_mb": 96}, status=201)
    as_admin("PUT", f"/projects/{project['id']}/secrets/DB_PASSWORD", {"value": "pa55-Word-e2e"})
    pipeline = {
        "nodes": [
            {"id": "db", "service": "db", "env": {"PASSWORD": "${secrets.DB_PASSWORD}"}},
            {"id": "seed", "plugin": "seed", "params": {
                "greeting": sneaky, "db": "${services.db.host}",
                "outputs": {"token": "from-the-plugin"}}},
            {"id": "web", "service": "web", "env": {"SEED_TOKEN": "${steps.seed.outputs.token}",
                                                     "DB_URL": "${services.db.url}"}},
        ],
        "edges": [{"from": "db", "to": "seed"}, {"from": "seed", "to": "web"}],
    }
    cyclic = {**pipeline, "edges": pipeline["edges"] + [{"from": "web", "to": "db"}]}
    refused = as_admin("POST", f"/projects/{project['id']}/pipeline/versions",
                       {"definition": cyclic}, status=422)
    assert "cycle" in json.dumps(refused).lower()
    as_admin("POST", f"/projects/{project['id']}/pipeline/versions",
             {"definition": pipeline, "comment": "first"}, status=201)
    environment = as_admin("POST", "/environments", {"name": "staging", "base_domain": "ingress.lan"},
                           status=201)
    port = _free_port()
    node = as_admin("POST", f"/environments/{environment['id']}/nodes",
                    {"name": "node-1", "host": "127.0.0.1", "port": port}, status=201)
    agent(node["token"], port)
    _wait_node_online(as_admin, node["id"])

    reader, writer = make_user("qa-anna"), make_user("se-bob")
    for team_name, member, level in (("QA Team", reader, "read_only"), ("SE Team", writer, "full")):
        team = as_admin("POST", "/teams", {"name": team_name}, status=201)
        as_admin("PUT", f"/teams/{team['id']}/members/{member.id}", status=200)
        for target in ({"project_id": project["id"]}, {"environment_id": environment["id"]}):
            as_admin("POST", "/grants", {"team_id": team["id"], "level": level, **target}, status=201)
    as_writer, as_reader = Caller(client, bearer(writer)), Caller(client, bearer(reader))

    # --- a Full Access user deploys a chosen tag ------------------------------------------
    tags = as_writer("GET", f"/projects/{project['id']}/steps/web/tags")["tags"]
    assert sorted(tags) == ["features-cart", "features-login"]
    not_matching = as_writer("POST", "/deployments", {
        "project_id": project["id"], "environment_id": environment["id"], "name": "pr-1",
        "tags": {"web": "v1.0"}}, status=422)
    assert "web" in json.dumps(not_matching)
    created = as_writer("POST", "/deployments", {
        "project_id": project["id"], "environment_id": environment["id"], "name": "pr-1",
        "tags": {"web": "features-login"}}, status=201)
    first = wait_for(as_writer, created["id"], "ready")
    assert first["urls"] == {"web": "http://web.pr-1.staging.ingress.lan"}
    containers = containers_of(docker_client, agent.node_id, created["id"])
    services = [c for c in containers if c.labels.get("org.nullops.step") in ("db", "web")]
    assert len(services) == 2, [c.name for c in containers]
    for container in services:   # the project's limits on every container
        host_config = container.attrs["HostConfig"]
        assert host_config["NanoCpus"] == 250_000_000 and host_config["Memory"] == 96 * 1024 * 1024
        assert not host_config["Privileged"] and not host_config.get("Binds")
    web = next(c for c in services if c.labels["org.nullops.step"] == "web")
    env = dict(item.split("=", 1) for item in web.attrs["Config"]["Env"])
    assert env["SNEAKY"] == sneaky                       # passed on as plain data
    assert env["SEED_TOKEN"] == "from-the-plugin"         # an earlier step's output
    assert env["DB_URL"] == "http://db:5432"
    assert "pa55-Word-e2e" not in json.dumps(as_admin("GET", f"/deployments/{created['id']}"))

    # --- the Read-Only user sees everything and changes nothing ---------------------------
    dep_path = f"/deployments/{created['id']}"
    assert as_reader("GET", dep_path)["status"] == "ready"
    assert as_reader("GET", f"{dep_path}/events")["total"] >= 2
    assert as_reader("GET", f"/projects/{project['id']}/pipeline/versions")["total"] == 1
    assert any(d["id"] == created["id"] for d in as_reader("GET", "/deployments")["items"])
    for method, path, body in (
        ("POST", "/deployments", {"project_id": project["id"], "environment_id": environment["id"],
                                  "name": "qa-try", "tags": {"web": "features-login"}}),
        ("POST", f"{dep_path}/clone", {"name": "qa-clone"}),
        ("POST", f"{dep_path}/extend", None),
        ("POST", f"{dep_path}/retry", None),
        ("DELETE", dep_path, None),
    ):
        as_reader(method, path, body, status=403)

    # --- clone with another tag, extend, delete -------------------------------------------
    clone = as_writer("POST", f"{dep_path}/clone", {"name": "pr-1-cart", "tags": {"web": "features-cart"}},
                      status=201)
    clone = wait_for(as_writer, clone["id"], "ready")
    assert clone["tags"]["web"] == "features-cart" and clone["cloned_from_id"] == created["id"]
    before = as_writer("GET", dep_path)["remaining_seconds"]
    time.sleep(1.1)
    extended = as_writer("POST", f"{dep_path}/extend")
    assert extended["remaining_seconds"] >= before
    as_writer("DELETE", dep_path, status=202)
    assert wait_for(as_writer, created["id"], "deleted")["deleted_at"]
    assert containers_of(docker_client, agent.node_id, created["id"]) == []

    # --- auto-cleanup removes the clone once its inactivity period has run out -------------
    as_admin("PATCH", f"/projects/{project['id']}", {"cleanup_minutes": 5})
    with app.app_context():
        row = db.session.get(Deployment, clone["id"])
        row.last_activity_at = utcnow().replace(microsecond=0) - _minutes(6)
        db.session.commit()
    gone = wait_for(as_writer, clone["id"], "deleted", timeout=60)
    assert gone["deleted_at"]
    events = as_writer("GET", f"/deployments/{clone['id']}/events?per_page=100")["items"]
    assert any("auto-cleanup" in (e.get("message") or "") for e in events), events

    # --- a project that fits on no node fails at once, and nothing is written --------------
    huge = as_admin("POST", "/projects", {"name": "huge", "cpus": 200, "memory_mb": 4_000_000},
                    status=201)
    as_admin("POST", f"/projects/{huge['id']}/pipeline/versions", {"definition": {
        "nodes": [{"id": "db", "service": "db"}], "edges": []}}, status=201)
    count = as_admin("GET", "/deployments?include_deleted=true")["total"]
    no_fit = as_admin("POST", "/deployments", {"project_id": huge["id"],
                                               "environment_id": environment["id"], "name": "big"},
                      status=409)
    assert "node-1" in no_fit["error"]["message"]
    assert as_admin("GET", "/deployments?include_deleted=true")["total"] == count

    # --- the CI client over HTTP: deploy, wait, URLs as JSON, delete ----------------------
    token = as_writer("POST", "/tokens", {"name": "ci"}, status=201)["token"]
    cli_env = {**os.environ, "NULLOPS_URL": live_server, "NULLOPS_TOKEN": token}
    deployed = _nullopsctl(cli_env, "deploy", "--project", "shop", "--environment", "staging",
                           "--name", "pr-ci", "--tag", "web=features-login", "--wait", "--timeout", "120")
    assert deployed.returncode == 0, deployed.stderr
    summary = json.loads(deployed.stdout)
    assert summary["status"] == "ready"
    assert summary["urls"] == {"web": "http://web.pr-ci.staging.ingress.lan"}
    urls = _nullopsctl(cli_env, "urls", "--environment", "staging", "--name", "pr-ci")
    assert json.loads(urls.stdout) == summary["urls"]
    bad_tag = _nullopsctl(cli_env, "deploy", "--project", "shop", "--environment", "staging",
                          "--name", "pr-bad", "--tag", "web=does-not-exist", "--wait")
    assert bad_tag.returncode == 2 and "does-not-exist" in bad_tag.stderr
    removed = _nullopsctl(cli_env, "delete", "--environment", "staging", "--name", "pr-ci", "--wait",
                          "--timeout", "120")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["status"] == "deleted"

    # --- nothing was interpreted by a shell, nothing is left -------------------------------
    assert not marker.exists()
    assert left_behind(docker_client, f"org.nullops.node={agent.node_id}") == []


def _nullopsctl(env, *args):
    return subprocess.run([sys.executable, str(REPO / "client" / "nullopsctl.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _minutes(n):
    from datetime import timedelta

    return timedelta(minutes=n)


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_node_online(caller, node_id, timeout=30):
    deadline = time.monotonic() + timeout
    while caller("GET", f"/nodes/{node_id}")["status"] != "online":
        assert time.monotonic() < deadline, caller("GET", f"/nodes/{node_id}")
        time.sleep(0.2)


def test_cli_without_token_says_how_to_get_one():
    result = subprocess.run([sys.executable, str(REPO / "client" / "nullopsctl.py"), "--url",
                             "http://127.0.0.1:9", "status", "--environment", "e", "--name", "n"],
                            env={k: v for k, v in os.environ.items() if k != "NULLOPS_TOKEN"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "NULLOPS_TOKEN" in result.stderr


def test_cli_reports_an_unreachable_control_plane(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "client" / "nullopsctl.py"), "--url",
                             "http://127.0.0.1:9", "status", "--environment", "e", "--name", "n"],
                            env={**os.environ, "NULLOPS_TOKEN": "x"}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 4 and "cannot reach" in result.stderr
