"""Issue 7's end-to-end test of the reference demo (app/demo.py, demo/app, images/postgres,
plugins/*): the demo images in a real registry, the demo seeded through the service layer, a
real agent process, the real controller and a real Caddy, the API through the Flask client.

Two copies deploy side by side with different web tags; each answers at its own URL with its own
version and its own database (a row written in one is not in the other); a container on one
deployment's network cannot reach the other's containers; a clone gets a fresh database of its
own; all are deleted and nothing with NullOps labels is left.
"""
import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from docker.errors import NotFound
from sqlalchemy import func, select

from app import demo
from app.controller import Controller
from app.extensions import db
from app.models import PipelineVersion, Plugin, Project, ProjectSecret, Registry, Service
from app.models import nodes as node_model
from tests.caddytools import caddy, web  # noqa: F401 - fixtures
from tests.dockertools import HASH_LABEL, left_behind
from tests.e2e.support import Caller
from tests.plugins.images import build_all

ROOT = Path(__file__).resolve().parents[2]
# Two of the demo's tags: they differ by version and theme.
WEB_TAGS = {"1.0": {"APP_VERSION": "1.0", "APP_COLOR": "#2f6fdf"},
            "features-dark-mode": {"APP_VERSION": "features-dark-mode", "APP_COLOR": "#c05fe0",
                                   "APP_THEME": "dark"}}
# The test tags of tests/plugins/images.py -> where the seeded catalog looks for them.
FIRST_PARTY = {"postgres": "nullops/postgres:15", "postgres-database": "nullops/postgres-database:1.0",
               "sql-script": "nullops/sql-script:1.0", "http-wait": "nullops/http-wait:1.0"}
SEEDED_ROWS = 3
READY_TIMEOUT_S = 120


# --- the demo's images in a registry of the test's own ----------------------------------------
def build_web(client, base_image, tag, args):
    """nullops-test/demo-web:<tag> from demo/app, rebuilt only when its inputs changed."""
    folder = ROOT / "demo" / "app"
    digest = hashlib.sha256(f"base {client.images.get(base_image).id}\n{sorted(args.items())}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    name = f"nullops-test/demo-web:{tag}"
    try:
        if client.images.get(name).labels.get(HASH_LABEL) == digest.hexdigest():
            return name
    except NotFound:
        pass
    client.images.build(path=str(folder), tag=name, buildargs={"BASE_IMAGE": base_image, **args},
                        labels={HASH_LABEL: digest.hexdigest()}, forcerm=True, rm=True, pull=False)
    return name


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def open_registry(folder):
    """Debian's docker-registry without auth on a free loopback port (the demo's is on 5000)."""
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is missing (apt-get install docker-registry; make test installs it)")
    port = _free_port()
    (folder / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    with open(folder / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "registry did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def push(docker_client, source, repository, tag):
    docker_client.images.get(source).tag(repository, tag)
    for line in docker_client.api.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    # Untagged again: the agent pulls the image from the registry (its layers are here already).
    docker_client.images.remove(f"{repository}:{tag}", noprune=True)


@pytest.fixture
def registry(tmp_path, docker_client, base_image):
    """The registry with every image the demo's catalog names: "127.0.0.1:<port>"."""
    sources = {f"demo/web:{tag}": build_web(docker_client, base_image, tag, args)
               for tag, args in WEB_TAGS.items()}
    built = build_all(docker_client, base_image)
    sources.update({FIRST_PARTY[name]: tag for name, tag in built.items()})
    folder = tmp_path / "registry"
    folder.mkdir()
    with open_registry(folder) as address:
        refs = [(source, *f"{address}/{target}".rsplit(":", 1)) for target, source in sources.items()]
        # The first push sends the base layer they share; then PostgreSQL's big layer goes up
        # next to the others (compressing layers is what takes the time).
        push(docker_client, *refs[0])
        errors = []

        def push_all(items):
            try:
                for item in items:
                    push(docker_client, *item)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        big = [r for r in refs[1:] if "postgres:" in r[0]]
        threads = [threading.Thread(target=push_all, args=(items,))
                   for items in (big, [r for r in refs[1:] if r not in big])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        try:
            yield address
        finally:
            for _source, repository, tag in refs:   # what the agent pulled
                try:
                    docker_client.images.remove(f"{repository}:{tag}", noprune=True)
                except NotFound:
                    pass


# --- the stack: agent, controller with Caddy ----------------------------------------------------
@pytest.fixture
def controller(app, caddy, web, monkeypatch):  # noqa: F811 - the imported fixtures
    monkeypatch.setitem(app.config, "NULLOPS_CADDY_ADMIN_URL", caddy.admin_url)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_LISTEN", caddy.listen)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_PAGES_UPSTREAM", web)
    instance = Controller(app, poll_s=0.2)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def cpu_report_ignored(monkeypatch):
    """Admission without the CPU figure of the agent's live report (memory kept): that figure is
    the host's CPU use of the last seconds, and on a busy CI host (or next to the copies this
    test just started) it refuses the clone for reasons this test is not about. Admission's
    own tests cover the report (tests/test_admission.py)."""
    real = node_model.reported_free
    monkeypatch.setattr(node_model, "reported_free", lambda figures: (None, real(figures)[1]))
    # and the minute's CPU use, which refuses a saturated node whatever it has free
    monkeypatch.setattr(node_model, "sustained_cpu_percent", lambda figures: None)


def wait_for(api, deployment_id, *statuses, timeout=READY_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        deployment = api("GET", f"/deployments/{deployment_id}")
        if deployment["status"] in statuses:
            return deployment
        if deployment["status"] in ("failed", "cleanup_failed"):
            events = api("GET", f"/deployments/{deployment_id}/events?per_page=100")["items"]
            pytest.fail(f"{deployment['name']} {deployment['status']}: {deployment['status_message']}\n"
                        + "\n".join(e.get("message") or "" for e in events))
        assert time.monotonic() < deadline, f"still {deployment['status']}: {deployment}"
        time.sleep(0.3)


def through(proxy, url, path="/api/items", body=None, timeout=30.0):
    """(status, JSON) of a request to a deployment URL through Caddy (Host header, loopback)."""
    host = url.split("://", 1)[1].rstrip("/")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{proxy.listen}{path}", data=data,
                                     headers={"Host": host, "Content-Type": "application/json"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or time.monotonic() > deadline:
                return exc.code, exc.read().decode(errors="replace")
        time.sleep(0.2)  # 502/503: the route is not there yet


def containers_of(docker_client, node_id, deployment_id):
    selectors = [f"org.nullops.node={node_id}", f"org.nullops.deployment=dep-{deployment_id}"]
    return {c.labels.get("org.nullops.step"): c
            for c in docker_client.containers.list(all=True, filters={"label": selectors})}


def network_of(docker_client, node_id, deployment_id):
    selectors = [f"org.nullops.node={node_id}", f"org.nullops.deployment=dep-{deployment_id}",
                 "org.nullops.role=network"]
    (network,) = docker_client.networks.list(filters={"label": selectors})
    return network


def probe(docker_client, image, network, labels, targets):
    """From a container on `network`: {"host:port": connected?} (busybox nc, 3 s each)."""
    script = "; ".join(f"nc -w 3 {t.replace(':', ' ')} -e /bin/true && echo 'ok {t}' || echo 'no {t}'"
                       for t in targets)
    container = docker_client.containers.run(image, ["sh", "-c", script], network=network.name,
                                             labels=labels, detach=True)
    try:
        container.wait(timeout=60)
        out = container.logs().decode()
    finally:
        container.remove(force=True)
    return {t: f"ok {t}" in out for t in targets}


# --- the tests ----------------------------------------------------------------------------------
def test_demo_seed_is_idempotent_and_keeps_what_an_admin_changed(app, admin):
    first = demo.seed(admin, "http://127.0.0.1:5999")
    assert {what for _kind, _name, what in first} == {"created"}
    project = db.session.scalar(select(Project).where(Project.name == "demo"))
    version = db.session.scalar(select(PipelineVersion).where(PipelineVersion.project_id == project.id))
    steps = {s["id"]: s for s in version.resolved["steps"]}
    assert [s["id"] for s in version.resolved["steps"]] == ["db", "appdb", "schema", "web", "web-ready"]
    assert steps["web"]["tag_mode"] == "selectable" and steps["db"]["tag"] == "15"
    assert steps["web"]["env"]["DATABASE_URL"] == "${steps.appdb.outputs.url}"
    # Inside the deployment's network: web's own host and port, not the ingress URL.
    assert steps["web-ready"]["params"]["url"] == "http://${services.web.host}:${services.web.port}/health"
    for name in ("postgres-database", "sql-script", "http-wait"):
        plugin = db.session.scalar(select(Plugin).where(Plugin.name == name))
        assert plugin.params_schema == json.loads((ROOT / "plugins" / name / "schema.json").read_text())
        assert plugin.network is True
    secret = db.session.scalar(select(ProjectSecret).where(ProjectSecret.project_id == project.id))
    ciphertext = secret.value_ciphertext

    service = db.session.scalar(select(Service).where(Service.name == "web"))
    service.tag_pattern = "features-*"   # an admin's change survives a second seed
    db.session.commit()
    again = demo.seed(admin, "http://127.0.0.1:5999")
    assert {what for _kind, _name, what in again} == {"exists"}
    assert db.session.scalar(select(func.count(PipelineVersion.id))) == 1
    assert db.session.scalar(select(func.count(Registry.id)).where(Registry.name == "local")) == 1
    assert db.session.get(Service, service.id).tag_pattern == "features-*"
    assert db.session.get(ProjectSecret, secret.id).value_ciphertext == ciphertext   # generated once


@pytest.mark.docker
@pytest.mark.postgres
def test_two_demo_copies_run_side_by_side_isolated_then_clone_and_delete(
        app, client, admin, bearer, registry, agent, controller, caddy, docker_client,  # noqa: F811
        busybox_image, test_labels, cpu_report_ignored):
    started = time.monotonic()
    api = Caller(client, bearer(admin))
    demo.seed(admin, f"http://{registry}")
    project = api("GET", "/projects?per_page=100")["items"]
    project_id = next(p["id"] for p in project if p["name"] == "demo")
    assert sorted(api("GET", f"/projects/{project_id}/steps/web/tags")["tags"]) == sorted(WEB_TAGS)

    environment = api("POST", "/environments", {"name": "local", "base_domain": "localhost"}, status=201)
    port = _free_port()
    node = api("POST", f"/environments/{environment['id']}/nodes",
               {"name": "local", "host": "127.0.0.1", "port": port}, status=201)
    agent(node["token"], port)
    deadline = time.monotonic() + 30
    while api("GET", f"/nodes/{node['id']}")["status"] != "online":
        assert time.monotonic() < deadline, api("GET", f"/nodes/{node['id']}")
        time.sleep(0.2)

    # --- two copies with different web tags, side by side ------------------------------------
    copies = {}
    for name, tag in (("alpha", "1.0"), ("beta", "features-dark-mode")):
        copies[name] = api("POST", "/deployments", {"project_id": project_id, "name": name,
                                                    "environment_id": environment["id"],
                                                    "tags": {"web": tag}}, status=201)
    for name in copies:
        copies[name] = wait_for(api, copies[name]["id"], "ready")
    deployed_s = time.monotonic() - started
    alpha, beta = copies["alpha"], copies["beta"]
    # With the port Caddy listens on, as a browser needs it (Caddy matches the host without it).
    assert alpha["urls"]["web"] == f"http://web.alpha.local.localhost:{caddy.http_port}"
    assert beta["urls"]["web"] == f"http://web.beta.local.localhost:{caddy.http_port}"

    status, seen_alpha = through(caddy, alpha["urls"]["web"])
    assert status == 200, seen_alpha
    status, seen_beta = through(caddy, beta["urls"]["web"])
    assert status == 200, seen_beta
    assert seen_alpha["version"] == "1.0" and seen_beta["version"] == "features-dark-mode"
    assert len(seen_alpha["items"]) == SEEDED_ROWS and len(seen_beta["items"]) == SEEDED_ROWS
    assert seen_alpha["items"][0]["title"] == "Seeded by the sql-script plugin"
    status, page = caddy.get("web.beta.local.localhost")
    assert status == 200 and "features-dark-mode" in page and "Seeded by the sql-script plugin" in page

    # --- each copy has its own database ------------------------------------------------------
    status, added = through(caddy, alpha["urls"]["web"], body={"title": "only in alpha"})
    assert status == 201, added
    assert [i["title"] for i in through(caddy, alpha["urls"]["web"])[1]["items"]][-1] == "only in alpha"
    assert "only in alpha" not in json.dumps(through(caddy, beta["urls"]["web"])[1])

    # --- one copy cannot reach the other's containers ------------------------------------------
    node_id = agent.node_id
    mine = containers_of(docker_client, node_id, alpha["id"])
    theirs = containers_of(docker_client, node_id, beta["id"])
    assert {"db", "web"} <= mine.keys() and {"db", "web"} <= theirs.keys()
    beta_net = network_of(docker_client, node_id, beta["id"])
    beta_ips = {step: theirs[step].attrs["NetworkSettings"]["Networks"][beta_net.name]["IPAddress"]
                for step in ("web", "db")}
    own, other_web, other_db = "web:8000", f"{beta_ips['web']}:8000", f"{beta_ips['db']}:5432"
    reached = probe(docker_client, busybox_image, network_of(docker_client, node_id, alpha["id"]),
                    test_labels, [own, other_web, other_db])
    assert reached == {own: True, other_web: False, other_db: False}, reached
    # (and the same check from beta's side proves the probe can reach a web it may reach)
    assert probe(docker_client, busybox_image, beta_net, test_labels, [other_web]) == {other_web: True}

    # --- a clone gets a fresh database of its own ------------------------------------------------
    clone = api("POST", f"/deployments/{alpha['id']}/clone", {"name": "alpha-copy"}, status=201)
    clone = wait_for(api, clone["id"], "ready")
    assert clone["tags"]["web"] == "1.0" and clone["cloned_from_id"] == alpha["id"]
    status, seen_clone = through(caddy, clone["urls"]["web"])
    assert status == 200 and seen_clone["version"] == "1.0", seen_clone
    assert len(seen_clone["items"]) == SEEDED_ROWS and "only in alpha" not in json.dumps(seen_clone)

    # --- delete them all: nothing is left ----------------------------------------------------------
    for deployment in (alpha, beta, clone):
        api("DELETE", f"/deployments/{deployment['id']}", status=202)
    for deployment in (alpha, beta, clone):
        assert wait_for(api, deployment["id"], "deleted")["deleted_at"]
    assert caddy.get("web.alpha.local.localhost")[0] == 404
    assert left_behind(docker_client, f"org.nullops.node={node_id}") == []
    print(f"\ntwo demo copies ready in {deployed_s:.1f} s; whole test {time.monotonic() - started:.1f} s")
