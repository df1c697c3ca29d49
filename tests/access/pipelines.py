"""Matrix rows for pipeline versions (see tests/access/__init__.py), and the catalog factory the
pipeline tests share: whoever may view the project sees its versions; only admins save them."""
from sqlalchemy import select

from app.extensions import db
from app.models import Plugin, Registry, Service
from app.models.registries import DOCKER_HUB_NAME, DOCKER_HUB_URL
from app.services import catalog, pipelines

PARAMS_SCHEMA = {
    "type": "object",
    "properties": {"host": {"type": "string"}, "password": {"type": "string"},
                   "size_mb": {"type": "integer", "minimum": 1}},
    "required": ["host"],
    "additionalProperties": False,
}


def docker_hub():
    """The row migration 0003 makes (tests start from empty tables; another area may have
    made it again already)."""
    hub = db.session.scalar(select(Registry).where(Registry.is_default))
    if hub is None:
        hub = Registry(name=DOCKER_HUB_NAME, url=DOCKER_HUB_URL, is_default=True)
        db.session.add(hub)
        db.session.flush()
    return hub


def make_catalog(prefix=""):
    """A pinned database service, a web service with selectable tags and a database plugin,
    made directly through the models. `prefix` keeps names apart from other areas' rows."""
    hub = docker_hub()
    rows = {
        "db": Service(name=f"{prefix}postgres", registry_id=hub.id, image="postgres",
                      tag_mode="pinned", tag="15", ports=[5432], exposed_ports=[],
                      env={"POSTGRES_DB": "app"}, health_check={"type": "tcp", "port": 5432}),
        "web": Service(name=f"{prefix}shop-web", registry_id=hub.id, image="team/shop-web",
                       tag_mode="selectable", tag_pattern="v*", ports=[8000], exposed_ports=[8000],
                       env={"LOG_LEVEL": "info"},
                       health_check={"type": "http", "port": 8000, "path": "/health"}),
        "mkdb": Plugin(name=f"{prefix}postgres-database", registry_id=hub.id,
                       image="nullops/postgres-database", tag="1.0", params_schema=PARAMS_SCHEMA,
                       network=True),
    }
    db.session.add_all(rows.values())
    db.session.commit()
    return rows


def definition(prefix=""):
    """The pipeline of the brief: a database, a plugin that makes one, a web service."""
    return {
        "nodes": [
            {"id": "db", "service": f"{prefix}postgres",
             "env": {"POSTGRES_PASSWORD": "${secrets.DB_PASSWORD}"}},
            {"id": "mkdb", "plugin": f"{prefix}postgres-database",
             "params": {"host": "${services.db.host}", "password": "${secrets.DB_PASSWORD}"}},
            {"id": "web", "service": f"{prefix}shop-web",
             "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}", "PUBLIC_URL": "${services.web.url}"},
             "position": {"x": 120, "y": 40}},
        ],
        "edges": [{"from": "db", "to": "mkdb"}, {"from": "mkdb", "to": "web"}],
    }


PREFIX = "matrix-"
VERSIONS = "/api/v1/projects/{project}/pipeline/versions"
VIEW = dict(zip(("anonymous", "outsider", "reader", "writer", "admin"), (401, 404, 200, 200, 200),
                strict=True))
ADD = dict(zip(("anonymous", "outsider", "reader", "writer", "admin"), (401, 404, 403, 403, 201),
               strict=True))
RULE = "/api/v1/projects/<int:project_id>/pipeline"

ROWS = {
    ("GET", RULE + "/versions"): (VERSIONS, None, VIEW),
    ("POST", RULE + "/versions"): (
        VERSIONS, {"definition": definition(PREFIX), "comment": "second"}, ADD),
    ("GET", RULE + "/versions/<int:number>"): (VERSIONS + "/1", None, VIEW),
    ("GET", RULE + "/versions/<int:number>/diff"): (VERSIONS + "/1/diff", None, VIEW),
    ("GET", RULE + "/export"): ("/api/v1/projects/{project}/pipeline/export", None, VIEW),
    ("GET", RULE + "/editor"): ("/api/v1/projects/{project}/pipeline/editor", None, VIEW),
    # The matrix sends JSON, which YAML reads too (import accepts application/json).
    ("POST", RULE + "/import"): (
        "/api/v1/projects/{project}/pipeline/import", {**definition(PREFIX), "comment": "imported"}, ADD),
}


def make_ids(ex, ids):
    make_catalog(PREFIX)
    catalog.put_secret(ex["admin"], ex["project"], "DB_PASSWORD", "pw-123")
    version = pipelines.save_version(ex["admin"], ex["project"], definition(PREFIX), "first")
    return {"pipeline_version": version.number}
