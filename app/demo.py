"""The reference demo: a project "demo" whose pipeline is PostgreSQL -> postgres-database ->
sql-script -> the demo web app -> http-wait, seeded through the service layer like an admin
would through the API (`nullops demo seed`, run by `make run` and `make demo`).

The images come from scripts/demo-images.sh (a local registry on 127.0.0.1:5000 by default):
demo/web in the tags of WEB_TAGS (demo/app), nullops/postgres:15 (images/postgres) and the
three first-party plugins (plugins/<name>, each with its schema.json as params_schema).

Seeding is idempotent: what exists already (by name) is left as the admin may have changed it,
the secret is generated once, and a pipeline version is saved only when the project has none.
"""
import json
import secrets as random_secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from app.extensions import db
from app.models import Deployment, Environment, Plugin, Project, ProjectSecret, Registry, Service, User
from app.services import catalog, deployments, pipelines, plugins, registries, service_catalog
from app.services.errors import InsufficientResources
from app.services.specs import service_urls

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
REGISTRY_NAME = "local"
REGISTRY_URL = "http://127.0.0.1:5000"
PROJECT = "demo"
ENVIRONMENT = "local"          # the dev stack's environment (app/devstack.py)
WEB_TAGS = ("1.0", "1.1", "features-dark-mode")
SECRET = "DB_ADMIN_PASSWORD"
# One deployment's containers each get these limits; they fit several copies on a laptop.
LIMITS = {"cpus": 0.5, "memory_mb": 256}
READY_TIMEOUT_S = 300

SEED_SQL = """\
CREATE TABLE IF NOT EXISTS items (
    id serial PRIMARY KEY,
    title text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO items (title) VALUES
    ('Seeded by the sql-script plugin'),
    ('This database belongs to this deployment only'),
    ('Deploy another copy: it gets its own');
"""

SERVICES = (
    {"name": "postgres", "image": "nullops/postgres", "tag_mode": "pinned", "tag": "15",
     "description": "PostgreSQL 15 from Debian's packages (images/postgres)",
     "ports": [5432], "env": {"POSTGRES_PASSWORD": f"${{secrets.{SECRET}}}"},
     "health_check": {"type": "exec", "command": ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]}},
    {"name": "web", "image": "demo/web", "tag_mode": "selectable", "tag_pattern": "*",
     "description": "The demo web app (demo/app): its database's rows and its own version",
     "ports": [8000], "exposed_ports": [8000],
     "health_check": {"type": "http", "port": 8000, "path": "/health"}},
)
PLUGINS = (
    {"name": "postgres-database", "image": "nullops/postgres-database", "tag": "1.0",
     "description": "A database and a role of their own in a PostgreSQL service"},
    {"name": "sql-script", "image": "nullops/sql-script", "tag": "1.0",
     "description": "Runs SQL in one transaction against a connection URL"},
    {"name": "http-wait", "image": "nullops/http-wait", "tag": "1.0",
     "description": "Waits until a URL answers as expected"},
)
# The plugins reach the deployment's services: network true. Small, but enough for Python.
PLUGIN_LIMITS = {"cpus": 0.5, "memory_mb": 128, "timeout_s": 180, "network": True}

PIPELINE = {
    "nodes": [
        {"id": "db", "service": "postgres", "position": {"x": 40, "y": 120}},
        {"id": "appdb", "plugin": "postgres-database", "position": {"x": 240, "y": 120},
         "params": {"host": "${services.db.host}", "port": "${services.db.port}",
                    "admin_password": f"${{secrets.{SECRET}}}", "database": "demo", "user": "demo_app"}},
        {"id": "schema", "plugin": "sql-script", "position": {"x": 440, "y": 120},
         "params": {"url": "${steps.appdb.outputs.url}", "sql": SEED_SQL}},
        {"id": "web", "service": "web", "position": {"x": 640, "y": 120},
         "env": {"DATABASE_URL": "${steps.appdb.outputs.url}"}},
        # Inside the deployment's network web answers at web:8000; ${services.web.url} is the
        # ingress URL, which a container of the deployment may not resolve.
        {"id": "web-ready", "plugin": "http-wait", "position": {"x": 840, "y": 120},
         "params": {"url": "http://${services.web.host}:${services.web.port}/health",
                    "body_contains": "ok", "timeout_s": 90, "interval_s": 0.5}},
    ],
    "edges": [{"from": "db", "to": "appdb"}, {"from": "appdb", "to": "schema"},
              {"from": "schema", "to": "web"}, {"from": "web", "to": "web-ready"}],
}


class DemoError(Exception):
    """Something the demo needs is missing; the message says what to do."""


def _named(model, name):
    return db.session.scalar(select(model).where(model.name == name))


def params_schema(plugin_name):
    path = PLUGINS_DIR / plugin_name / "schema.json"
    if not path.is_file():
        raise DemoError(f"{path} is missing: the demo needs the first-party plugins under plugins/")
    return json.loads(path.read_text())


def seed(actor=None, registry_url=REGISTRY_URL, project_name=PROJECT):
    """Create what the demo needs and is missing. Returns [(kind, name, "created" | "exists")]."""
    done = []

    def note(kind, name, created):
        done.append((kind, name, "created" if created else "exists"))

    registry = _named(Registry, REGISTRY_NAME)
    created = registry is None
    if created:
        registry = registries.create(actor, REGISTRY_NAME, registry_url)
    note("registry", f"{REGISTRY_NAME} ({registry.url})", created)
    for fields in SERVICES:
        exists = _named(Service, fields["name"]) is not None
        if not exists:
            service_catalog.create(actor, registry_id=registry.id, **fields)
        note("service", fields["name"], not exists)
    for fields in PLUGINS:
        exists = _named(Plugin, fields["name"]) is not None
        if not exists:
            plugins.create(actor, registry_id=registry.id, params_schema=params_schema(fields["name"]),
                           **fields, **PLUGIN_LIMITS)
        note("plugin", fields["name"], not exists)
    project = _named(Project, project_name)
    if project is None:
        project = catalog.create(actor, Project, project_name,
                                 "The reference demo: PostgreSQL, a database and seed rows set up by "
                                 "plugins, a web app (make demo)", **LIMITS)
        note("project", project_name, True)
    else:
        note("project", project_name, False)
    has_secret = db.session.scalar(select(ProjectSecret.id).where(
        ProjectSecret.project_id == project.id, ProjectSecret.name == SECRET)) is not None
    if not has_secret:
        # Generated once and never shown: only the deployments' PostgreSQL and the plugin use it.
        catalog.put_secret(actor, project, SECRET, random_secrets.token_urlsafe(24))
    note("secret", SECRET, not has_secret)
    version = pipelines.latest_version(project)
    if version is None:
        version = pipelines.save_version(actor, project, PIPELINE, "the reference demo", via="demo")
        note("pipeline version", f"{project_name} v{version.number}", True)
    else:
        note("pipeline version", f"{project_name} v{version.number}", False)
    return done


def first_admin():
    admin = db.session.scalar(select(User).where(User.role == "admin", User.is_active.is_(True))
                              .order_by(User.id).limit(1))
    if admin is None:
        raise DemoError("no active admin exists: run `nullops users create-admin` (make run does)")
    return admin


def _environment(name):
    environment = _named(Environment, name)
    if environment is None:
        raise DemoError(f"environment {name!r} does not exist: `nullops dev` (make run) creates it "
                        "with its local node when it starts")
    return environment


def _live(environment, name):
    return db.session.scalar(select(Deployment).where(
        Deployment.environment_id == environment.id, Deployment.name == name,
        Deployment.status != "deleted"))


def deploy(actor, name=PROJECT, tag=WEB_TAGS[0], project_name=PROJECT, environment_name=ENVIRONMENT,
           admission_wait_s=90, say=None):
    """The deployment `name` of the demo project: an existing live one is kept (a failed one is
    retried), else one is created with the web tag `tag`. Returns (deployment, what happened).

    Admission counts the CPU the node's agent saw in use over the last seconds: right after
    the images were built the host may look full, so a refusal is retried for a while."""
    project = _named(Project, project_name)
    if project is None:
        raise DemoError(f"project {project_name!r} does not exist: run `nullops demo seed` first")
    environment = _environment(environment_name)
    existing = _live(environment, name)
    if existing is not None:
        if existing.status == "failed":
            return deployments.retry(actor, existing), "retried"
        return existing, f"exists ({existing.status})"
    deadline = time.monotonic() + admission_wait_s
    while True:
        try:
            return deployments.create(actor, project, environment, name, {"web": tag}), "created"
        except InsufficientResources as exc:
            db.session.rollback()
            if time.monotonic() > deadline:
                raise
            if say is not None:
                say(f"not admitted yet ({exc.message}); trying again")
                say = None   # once is enough
            time.sleep(2)


def wait_ready(deployment_id, timeout=READY_TIMEOUT_S, say=None):
    """Poll the row until the controller marks it ready; raise DemoError when it fails."""
    deadline, seen = time.monotonic() + timeout, None
    while True:
        db.session.expire_all()
        deployment = db.session.get(Deployment, deployment_id)
        state = (deployment.status, deployment.status_message)
        if say is not None and state != seen:
            say(f"{deployment.name}: {deployment.status}"
                + (f" - {deployment.status_message}" if deployment.status_message else ""))
            seen = state
        if deployment.status == "ready":
            return deployment
        if deployment.status in ("failed", "cleanup_failed", "deleting", "deleted"):
            raise DemoError(f"{deployment.name} is {deployment.status}: {deployment.status_message}")
        if time.monotonic() > deadline:
            raise DemoError(f"{deployment.name} is still {deployment.status} after {timeout} s "
                            "(is `nullops dev` running, with its local node online?)")
        time.sleep(0.5)


def addresses(deployment, ingress_listen):
    """(ingress URL, curl fallback, published URL or None) of the demo's web service."""
    url = service_urls(deployment)["web"]
    host = urlsplit(url).hostname
    curl = f"curl -H 'Host: {host}' http://127.0.0.1:{ingress_listen.rsplit(':', 1)[-1]}/"
    published = ((deployment.published or {}).get("web") or {}).get("ports", {}).get("8000")
    return f"{url}/", curl, f"http://127.0.0.1:{published}/" if published else None


# --- make demo: NullOps in the background, then the deployment -----------------------------------
def nullops_answers(host, port):
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_node_online(environment_name=ENVIRONMENT, timeout=60):
    """The dev stack's node, once its agent is linked (admission takes online nodes only)."""
    from app.models import Node

    deadline = time.monotonic() + timeout
    while True:
        db.session.expire_all()
        environment = _named(Environment, environment_name)
        node = None if environment is None else db.session.scalar(
            select(Node).where(Node.environment_id == environment.id, Node.name == "local"))
        if node is not None and node.status == "online":
            return node
        if time.monotonic() > deadline:
            state = "missing" if node is None else node.status
            raise DemoError(f"node local of environment {environment_name} is {state} after "
                            f"{timeout} s: see var/agent/agent.log")
        time.sleep(0.5)
