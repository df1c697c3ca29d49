"""Matrix rows for deployments (see tests/access/__init__.py), and the factories the deployment
tests share: pipeline versions in the resolved format of app/services/specs.py, nodes with
capacity, deployment rows in any status.

The rows use a project and an environment of their own with the spec example's grants (QA
Team Read-Only, SE Team Full Access): the reader sees deployments, their history, logs and
metrics, and is refused every change; the outsider sees nothing. Own ones, because deployments
keep a project or environment from being deleted and the catalog rows delete shop and staging.
Logs and metrics answer 503 to those who may see them: no controller runs in the matrix.
"""
from datetime import timedelta

from app.extensions import db
from app.models import AccessLevel, Deployment, Environment, Grant, Node, PipelineVersion, Project
from app.models.types import utcnow

ROLES = ("anonymous", "outsider", "reader", "writer", "admin")


def _row(*statuses):
    return dict(zip(ROLES, statuses, strict=True))


VIEW = _row(401, 404, 200, 200, 200)
DEPLOYMENT = "/api/v1/deployments/{deployment}"
ROWS = {
    ("GET", "/api/v1/deployments"): ("/api/v1/deployments", None, _row(401, 200, 200, 200, 200)),
    ("POST", "/api/v1/deployments"): (
        "/api/v1/deployments",
        {"project_id": "{deploy_project}", "environment_id": "{deploy_environment}", "name": "new-one",
         "tags": {}},
        _row(401, 404, 403, 201, 201)),
    ("GET", "/api/v1/deployments/<int:deployment_id>"): (DEPLOYMENT, None, VIEW),
    ("DELETE", "/api/v1/deployments/<int:deployment_id>"): (
        DEPLOYMENT, None, _row(401, 404, 403, 202, 202)),
    ("POST", "/api/v1/deployments/<int:deployment_id>/retry"): (
        "/api/v1/deployments/{failed_deployment}/retry", None, _row(401, 404, 403, 202, 202)),
    ("POST", "/api/v1/deployments/<int:deployment_id>/clone"): (
        DEPLOYMENT + "/clone", {"name": "a-copy"}, _row(401, 404, 403, 201, 201)),
    ("POST", "/api/v1/deployments/<int:deployment_id>/extend"): (
        DEPLOYMENT + "/extend", None, _row(401, 404, 403, 200, 200)),
    ("GET", "/api/v1/deployments/<int:deployment_id>/events"): (DEPLOYMENT + "/events", None, VIEW),
    ("GET", "/api/v1/deployments/<int:deployment_id>/live"): (DEPLOYMENT + "/live", None, VIEW),
    ("GET", "/api/v1/deployments/<int:deployment_id>/logs"): (
        DEPLOYMENT + "/logs?step=web&tail=10", None, _row(401, 404, 503, 503, 503)),
    ("GET", "/api/v1/deployments/<int:deployment_id>/metrics"): (
        DEPLOYMENT + "/metrics", None, _row(401, 404, 503, 503, 503)),
    ("GET", "/api/v1/projects/<int:project_id>/deploy-options"): (
        "/api/v1/projects/{deploy_project}/deploy-options", None, VIEW),
    # The step is pinned: who passes the access check gets 422 (there is no tag to choose).
    ("GET", "/api/v1/projects/<int:project_id>/steps/<step_id>/tags"): (
        "/api/v1/projects/{deploy_project}/steps/web/tags", None, _row(401, 404, 403, 422, 422)),
}


def make_ids(ex, ids):
    project, environment = Project(name="shop-two"), Environment(name="qa-lab")
    db.session.add_all([project, environment])
    db.session.flush()
    for team, level in ((ex["qa"], AccessLevel.READ_ONLY), (ex["se"], AccessLevel.FULL)):
        db.session.add_all([Grant(team_id=team.id, project_id=project.id, level=level.value),
                            Grant(team_id=team.id, environment_id=environment.id, level=level.value)])
    db.session.commit()
    version = pipeline_version(project, [service_step("web", tag="1.4", exposed=[8000]),
                                         service_step("db", tag="15", exposed=[])])
    node = add_node(environment, "node-1")
    ready = add_deployment(version, environment, node, "shared", status="ready")
    failed = add_deployment(version, environment, node, "broken", status="failed")
    return {"deploy_project": project.id, "deploy_environment": environment.id,
            "deployment": ready.id, "failed_deployment": failed.id}


# --- factories ----------------------------------------------------------------------------------
def registry(name="local", url="http://127.0.0.1:5000", username=None, password=None):
    """A registry row (through the service: the password is stored encrypted)."""
    from app.services import registries

    return registries.create(None, name, url, username, password)


def service_step(step_id, tag="1.0", mode="pinned", pattern=None, registry_id=0, image=None,
                 exposed=(8000,)):
    """A service step as app/services/specs.py documents the resolved format."""
    return {"id": step_id, "kind": "service", "service": f"{step_id}-service",
            "registry_id": registry_id, "image": image or f"team/{step_id}",
            "tag_mode": mode, "tag": tag if mode == "pinned" else None,
            "tag_pattern": pattern if mode == "selectable" else None,
            "ports": list(exposed), "exposed_ports": list(exposed), "env": {}, "command": None,
            "health_check": None, "depends_on": []}


def plugin_step(step_id, depends_on=()):
    return {"id": step_id, "kind": "plugin", "plugin": "postgres-database", "registry_id": 0,
            "image": "nullops/postgres-database", "tag": "1.0", "params": {}, "cpus": 0.5,
            "memory_mb": 256, "timeout_s": 300, "network": True, "depends_on": list(depends_on)}


def pipeline_version(project, steps, number=None):
    """The project's next pipeline version (or `number`), committed."""
    if number is None:
        latest = db.session.scalar(db.select(db.func.max(PipelineVersion.number))
                                   .where(PipelineVersion.project_id == project.id))
        number = (latest or 0) + 1
    version = PipelineVersion(project_id=project.id, number=number, definition={"nodes": [], "edges": []},
                              resolved={"steps": steps})
    db.session.add(version)
    db.session.commit()
    return version


def add_node(environment, name, cpus=4.0, memory_mb=8192, status="online", enabled=True,
             host=None, resources_at=None, cpu_overcommit=1.0, memory_reserve_mb=0):
    """A node with reported capacity; `host` ({cpus, cpu_percent, memory_total,
    memory_available in bytes}) is the agent's live report, fresh unless `resources_at` says.
    Its CPUs and memory are all allocatable unless asked (no overcommit, no reserve: the
    shipped defaults have tests of their own in tests/test_admission.py)."""
    node = Node(environment_id=environment.id, name=name, host="10.0.0.9", status=status,
                enabled=enabled, reported_cpus=cpus, reported_memory_mb=memory_mb)
    if cpu_overcommit is not None:
        node.cpu_overcommit = cpu_overcommit
    if memory_reserve_mb is not None:   # None: the database's default
        node.memory_reserve_mb = memory_reserve_mb
    if host is not None:
        node.resources = {"host": host, "allocated": {"cpus": 0, "memory_mb": 0}}
        node.resources_at = resources_at or utcnow()
    db.session.add(node)
    db.session.commit()
    return node


def add_deployment(version, environment, node, name, status="ready", cpus=1.0, memory_mb=1024,
                   idle_minutes=0, tags=None, **columns):
    """A deployment row as the controller would have left it."""
    steps = [s for s in version.resolved["steps"] if s["kind"] == "service"]
    last_activity = utcnow() - timedelta(minutes=idle_minutes)
    deployment = Deployment(
        name=name, project_id=version.project_id, environment_id=environment.id,
        node_id=node.id if node is not None else None, pipeline_version_id=version.id,
        tags=tags if tags is not None else {s["id"]: s["tag"] or "v1" for s in steps},
        cpus=cpus, memory_mb=memory_mb, status=status, last_activity_at=last_activity,
        deleted_at=utcnow() if status == "deleted" else None, **columns)
    db.session.add(deployment)
    db.session.commit()
    return deployment


def push_tags(address, username, password, repository, tags):
    """Tag an empty image under `tags` in a real registry through the Registry HTTP API v2
    (no Docker engine needed): one config blob, one manifest per tag."""
    import hashlib
    import json

    import requests

    session = requests.Session()
    session.auth = (username, password)
    base = f"http://{address}/v2/{repository}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    upload = session.post(f"{base}/blobs/uploads/", timeout=10)
    assert upload.status_code == 202, upload.text
    stored = session.put(upload.headers["Location"], params={"digest": digest}, data=config,
                         headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert stored.status_code == 201, stored.text
    media_type = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media_type, "layers": [], "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
        "digest": digest}})
    for tag in tags:
        put = session.put(f"{base}/manifests/{tag}", data=manifest,
                          headers={"Content-Type": media_type}, timeout=10)
        assert put.status_code == 201, put.text
