"""Deployments: create, clone, retry, extend, delete (cancel is delete), history, logs and
metrics; and what a deploy form needs from a project (its service steps and their tags)."""
import functools

from flask_login import current_user
from sqlalchemy import bindparam, func, inspect, select
from sqlalchemy.orm import selectinload

from app import access
from app.api.core import PageQuery, dump, operation, paginate
from app.api.schemas import Page, Pagination
from app.api.schemas.deployments import (
    DeploymentClone,
    DeploymentCreate,
    DeploymentLive,
    DeploymentOut,
    DeploymentQuery,
    DeployOptions,
    EventOut,
    LogsOut,
    LogsQuery,
    MetricsOut,
    StepTags,
)
from app.extensions import db
from app.models import (
    Deployment,
    DeploymentEvent,
    Environment,
    Node,
    PipelineVersion,
    Project,
    User,
)
from app.models.types import utcnow
from app.services import deployment_health, deployments
from app.services.errors import Forbidden, NotFound
from app.services.specs import VERSION_PORTS, exposed_urls

TAG = "deployments"


def _actor():
    return current_user._get_current_object()


def _ref(obj, label="name"):
    return None if obj is None else {"id": obj.id, label: getattr(obj, label)}


def _shown(deployments_stmt):
    """The deployments `deployments_stmt` selects (filtered, ordered, limited), newest first,
    with what a DeploymentOut shows, as plain rows: lists, details and the answers to changes
    read it in one query. The joins come after the limit: PostgreSQL plans a six-table join over
    the whole table in ~2 ms, more than it then takes to run (benchmarks/api_latency.py); the
    two optional names are looked up per row, which it plans in less time than two more joins."""
    d = deployments_stmt.subquery("d")
    node_name = select(Node.name).where(Node.id == d.c.node_id).scalar_subquery()
    creator_name = select(User.username).where(User.id == d.c.created_by_id).scalar_subquery()
    return (select(d.c.id, d.c.name, d.c.project_id, Project.name.label("project_name"),
                   d.c.environment_id, Environment.name.label("environment_name"),
                   Environment.base_domain, d.c.node_id, node_name.label("node_name"),
                   d.c.pipeline_version_id, PipelineVersion.number.label("version_number"),
                   PipelineVersion.created_at.label("version_created_at"),
                   d.c.tags, d.c.cpus, d.c.memory_mb, d.c.status, d.c.status_message,
                   d.c.status_changed_at, d.c.progress, d.c.created_by_id,
                   creator_name.label("creator_name"), d.c.created_at, d.c.last_activity_at,
                   func.coalesce(Project.cleanup_minutes, Environment.cleanup_minutes)
                   .label("cleanup_minutes"),
                   d.c.cloned_from_id, d.c.delete_requested_at, d.c.deleted_at)
            .join_from(d, Project, Project.id == d.c.project_id)
            .join(Environment, Environment.id == d.c.environment_id)
            .join(PipelineVersion, PipelineVersion.id == d.c.pipeline_version_id)
            .order_by(d.c.created_at.desc(), d.c.id.desc()))


def _out(rows):
    """DeploymentOut of _shown() rows, as the JSON encoder takes it (datetimes as they are): the
    rows come from our own columns, so they are shaped, not validated again (tests check the
    shape against the schema)."""
    now = utcnow()
    rows = [row._mapping for row in rows]  # by name: a row's attributes cost several times more
    ports = VERSION_PORTS.of({(row["pipeline_version_id"], row["version_created_at"]) for row in rows})
    return [_one_out(row, now, ports[(row["pipeline_version_id"], row["version_created_at"])])
            for row in rows]


def _one_out(row, now, ports):
    expires = deployments.expiry(row["status"], row["last_activity_at"], row["cleanup_minutes"])
    return {
        "id": row["id"], "name": row["name"],
        "project": {"id": row["project_id"], "name": row["project_name"]},
        "environment": {"id": row["environment_id"], "name": row["environment_name"]},
        "node": None if row["node_id"] is None else {"id": row["node_id"], "name": row["node_name"]},
        "pipeline_version": row["version_number"], "tags": row["tags"] or {}, "cpus": row["cpus"],
        "memory_mb": row["memory_mb"], "status": row["status"],
        "status_message": row["status_message"], "status_changed_at": row["status_changed_at"],
        "progress": row["progress"] or {},
        "urls": {} if row["deleted_at"] is not None else exposed_urls(
            ports, row["name"], row["environment_name"], row["base_domain"]),
        "created_by": None if row["created_by_id"] is None
        else {"id": row["created_by_id"], "username": row["creator_name"]},
        "created_at": row["created_at"], "last_activity_at": row["last_activity_at"],
        "expires_at": expires, "remaining_seconds": deployments.seconds_until(expires, now),
        "cloned_from_id": row["cloned_from_id"],
        "delete_requested_at": row["delete_requested_at"], "deleted_at": row["deleted_at"],
    }


def _dialect():
    return db.engine.dialect.name


@functools.cache
def _one_query(restricted, dialect):
    """The select of one deployment (`deployment_id`), limited to the visible ones or not."""
    stmt = select(Deployment).where(Deployment.id == bindparam("deployment_id"))
    return _shown(stmt.where(access.deployments_visible(dialect)) if restricted else stmt)


@functools.cache
def _list_query(filters, include_deleted, restricted, dialect):
    """The PageQuery of one shape of deployments list: `filters`, the names of the columns
    compared with a value (bind parameters of the same names)."""
    stmt = select(Deployment)
    if restricted:
        stmt = stmt.where(access.deployments_visible(dialect))
    for name in filters:
        stmt = stmt.where(getattr(Deployment, name) == bindparam(name))
    if not include_deleted:
        stmt = stmt.where(Deployment.deleted_at.is_(None))
    return PageQuery(stmt.order_by(Deployment.created_at.desc(), Deployment.id.desc()), _shown)


def _read_one(deployment_id, visibility=None):
    """A deployment as the API shows it, or None: `visibility` (access.visibility_params)
    limits it to what the caller may see."""
    rows = db.session.connection().execute(
        _one_query(visibility is not None, _dialect()),
        {"deployment_id": deployment_id, **(visibility or {})}).all()
    return _out(rows)[0] if rows else None


def deployment_out(deployment):
    """A deployment as the API shows it, read again after the change that the caller has just
    committed (its identity survives the commit's expiry, so nothing is reloaded twice)."""
    return _read_one(inspect(deployment).identity[0])


def _deployment(deployment_id, action="deploy"):
    deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment")
    if action != "view":  # get_visible has just decided "view"
        access.require(current_user, action, deployment)
    return deployment


def _project(project_id, action="view"):
    project = access.get_visible(current_user, Project, project_id, "project")
    access.require(current_user, action, project)
    return project


@operation("GET", "/deployments", summary="Deployments the caller may see (newest first)", tag=TAG,
           query=DeploymentQuery, response=Page[DeploymentOut])
def list_deployments(params):
    return deployments_page(params)


def deployments_page(params):
    """A page of the deployments the caller may see, as DeploymentOut dicts (the deployments
    page of the UI shows the same, from the same query). `params`: project_id, environment_id,
    status, include_deleted, page and per_page."""
    values = {name: getattr(params, name) for name in ("project_id", "environment_id", "status")
              if getattr(params, name) is not None}
    visibility = access.visibility_params(current_user, params.project_id, params.environment_id)
    # Deleted ones stay out unless asked for, and asking for their status is asking for them.
    include_deleted = params.include_deleted or params.status == "deleted"
    query = _list_query(tuple(values), include_deleted, visibility is not None, _dialect())
    page = paginate(query, params, values={**values, **(visibility or {})})
    page["items"] = _out(page["items"])
    return page


@operation("POST", "/deployments",
           summary="Deploy a project to an environment (tags for its selectable services)", tag=TAG,
           body=DeploymentCreate, response=DeploymentOut, status=201,
           scope="deploy")
def create_deployment(data):
    project = access.get_visible(current_user, Project, data.project_id, "project")
    environment = access.get_visible(current_user, Environment, data.environment_id, "environment")
    return deployment_out(deployments.create(_actor(), project, environment, data.name, data.tags))


@operation("GET", "/deployments/<int:deployment_id>", summary="One deployment", tag=TAG,
           response=DeploymentOut)
def get_deployment(deployment_id):
    # The visibility filter and the columns in one query: reads are the hot path.
    shown = _read_one(deployment_id, access.visibility_params(current_user))
    if shown is None:
        raise NotFound(f"deployment {deployment_id} does not exist")
    return shown


@operation("GET", "/deployments/<int:deployment_id>/live",
           summary="Status, step states and service health (what the deployment page polls)",
           tag=TAG, response=DeploymentLive)
def get_deployment_live(deployment_id):
    # Polled every 2 s by every open deployment page: one query, visibility included.
    shown = deployment_health.read(deployment_id, access.visibility_params(current_user))
    if shown is None:
        raise NotFound(f"deployment {deployment_id} does not exist")
    return shown


@operation("DELETE", "/deployments/<int:deployment_id>",
           summary="Delete a deployment, or cancel it while it is being created (idempotent)",
           tag=TAG, response=DeploymentOut, status=202,
           scope="deploy")
def delete_deployment(deployment_id):
    return deployment_out(deployments.request_delete(_actor(), _deployment(deployment_id)))


@operation("POST", "/deployments/<int:deployment_id>/retry",
           summary="Deploy a failed deployment again with the latest pipeline version", tag=TAG,
           response=DeploymentOut, status=202,
           scope="deploy")
def retry_deployment(deployment_id):
    return deployment_out(deployments.retry(_actor(), _deployment(deployment_id)))


@operation("POST", "/deployments/<int:deployment_id>/clone",
           summary="A new deployment like this one: latest pipeline version, tags changeable",
           tag=TAG, body=DeploymentClone, response=DeploymentOut, status=201,
           scope="deploy")
def clone_deployment(deployment_id, data):
    source = _deployment(deployment_id, "view")
    return deployment_out(deployments.clone(_actor(), source, data.name, data.tags))


@operation("POST", "/deployments/<int:deployment_id>/extend",
           summary="Reset the auto-cleanup timer", tag=TAG, response=DeploymentOut,
           scope="deploy")
def extend_deployment(deployment_id):
    return deployment_out(deployments.extend(_actor(), _deployment(deployment_id)))


@operation("GET", "/deployments/<int:deployment_id>/events",
           summary="A deployment's history, oldest first", tag=TAG, query=Pagination,
           response=Page[EventOut])
def list_deployment_events(deployment_id, params):
    deployment = _deployment(deployment_id, "view")
    stmt = (access.visible(current_user, DeploymentEvent)
            .where(DeploymentEvent.deployment_id == deployment.id)
            .options(selectinload(DeploymentEvent.actor))
            .order_by(DeploymentEvent.at, DeploymentEvent.id))

    def shape(event):
        return dump(EventOut, {"id": event.id, "at": event.at, "kind": event.kind,
                               "actor": _ref(event.actor, "username"), "message": event.message,
                               "data": event.data})

    return paginate(stmt, params, shape=shape)


@operation("GET", "/deployments/<int:deployment_id>/logs",
           summary="The last lines of a step's log, from its node", tag=TAG, query=LogsQuery,
           response=LogsOut)
def get_deployment_logs(deployment_id, params):
    deployment = _deployment(deployment_id, "view")
    return {"step": params.step, "lines": deployments.logs(deployment, params.step, params.tail)}


@operation("GET", "/deployments/<int:deployment_id>/metrics",
           summary="CPU and memory of the deployment's containers, from its node", tag=TAG,
           response=MetricsOut)
def get_deployment_metrics(deployment_id):
    deployment = _deployment(deployment_id, "view")
    samples = deployments.metrics(deployment)
    return dump(MetricsOut, {"at": utcnow(), "containers": samples})


@operation("GET", "/projects/<int:project_id>/deploy-options",
           summary="The latest pipeline version's service steps and their tag modes", tag=TAG,
           response=DeployOptions)
def get_deploy_options(project_id):
    return dump(DeployOptions, deployments.deploy_options(_project(project_id)))


@operation("GET", "/projects/<int:project_id>/steps/<step_id>/tags",
           summary="The tags a selectable service step offers (its pattern applied)", tag=TAG,
           response=StepTags)
def list_step_tags(project_id, step_id):
    project = _project(project_id)
    if not access.can_deploy_project(current_user, project):
        raise Forbidden("you may not deploy this project; ask an admin for Full Access")
    return dump(StepTags, deployments.step_tags(project, step_id))
