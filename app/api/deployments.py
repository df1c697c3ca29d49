"""Deployments: create, clone, retry, extend, delete (cancel is delete), history, logs and
metrics; and what a deploy form needs from a project (its service steps and their tags)."""
from flask_login import current_user
from sqlalchemy.orm import selectinload

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import Page, Pagination
from app.api.schemas.deployments import (
    DeploymentClone,
    DeploymentCreate,
    DeploymentOut,
    DeploymentQuery,
    DeployOptions,
    EventOut,
    LogsOut,
    LogsQuery,
    MetricsOut,
    StepTags,
)
from app.models import Deployment, DeploymentEvent, Environment, Project
from app.models.types import utcnow
from app.services import deployments
from app.services.errors import Forbidden
from app.services.specs import service_urls

TAG = "deployments"


def _actor():
    return current_user._get_current_object()


def _ref(obj, label="name"):
    return None if obj is None else {"id": obj.id, label: getattr(obj, label)}


def deployment_out(deployment, now=None):
    now = now or utcnow()
    data = {
        "id": deployment.id, "name": deployment.name,
        "project": _ref(deployment.project), "environment": _ref(deployment.environment),
        "node": _ref(deployment.node), "pipeline_version": deployment.pipeline_version.number,
        "tags": deployment.tags or {}, "cpus": deployment.cpus, "memory_mb": deployment.memory_mb,
        "status": deployment.status, "status_message": deployment.status_message,
        "status_changed_at": deployment.status_changed_at, "progress": deployment.progress or {},
        "urls": service_urls(deployment) if deployment.deleted_at is None else {},
        "created_by": _ref(deployment.created_by, "username"), "created_at": deployment.created_at,
        "last_activity_at": deployment.last_activity_at,
        "expires_at": deployments.expires_at(deployment),
        "remaining_seconds": deployments.remaining_seconds(deployment, now),
        "cloned_from_id": deployment.cloned_from_id,
        "delete_requested_at": deployment.delete_requested_at, "deleted_at": deployment.deleted_at,
    }
    return DeploymentOut.model_validate(data).model_dump(mode="json")


def _deployment(deployment_id, action="deploy"):
    deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment")
    if action != "view":  # get_visible has just decided "view" (two grant queries each time)
        access.require(current_user, action, deployment)
    return deployment


def _project(project_id, action="view"):
    project = access.get_visible(current_user, Project, project_id, "project")
    access.require(current_user, action, project)
    return project


@operation("GET", "/deployments", summary="Deployments the caller may see (newest first)", tag=TAG,
           query=DeploymentQuery, response=Page[DeploymentOut])
def list_deployments(params):
    stmt = access.visible(current_user, Deployment).options(
        selectinload(Deployment.project), selectinload(Deployment.environment),
        selectinload(Deployment.node), selectinload(Deployment.pipeline_version),
        selectinload(Deployment.created_by))
    for column, value in ((Deployment.project_id, params.project_id),
                          (Deployment.environment_id, params.environment_id),
                          (Deployment.status, params.status)):
        if value is not None:
            stmt = stmt.where(column == value)
    if not params.include_deleted:
        stmt = stmt.where(Deployment.deleted_at.is_(None))
    now = utcnow()
    stmt = stmt.order_by(Deployment.created_at.desc(), Deployment.id.desc())
    return paginate(stmt, params, shape=lambda deployment: deployment_out(deployment, now))


@operation("POST", "/deployments",
           summary="Deploy a project to an environment (tags for its selectable services)", tag=TAG,
           body=DeploymentCreate, response=DeploymentOut, status=201)
def create_deployment(data):
    project = access.get_visible(current_user, Project, data.project_id, "project")
    environment = access.get_visible(current_user, Environment, data.environment_id, "environment")
    return deployment_out(deployments.create(_actor(), project, environment, data.name, data.tags))


@operation("GET", "/deployments/<int:deployment_id>", summary="One deployment", tag=TAG,
           response=DeploymentOut)
def get_deployment(deployment_id):
    return deployment_out(_deployment(deployment_id, "view"))


@operation("DELETE", "/deployments/<int:deployment_id>",
           summary="Delete a deployment, or cancel it while it is being created (idempotent)",
           tag=TAG, response=DeploymentOut, status=202)
def delete_deployment(deployment_id):
    return deployment_out(deployments.request_delete(_actor(), _deployment(deployment_id)))


@operation("POST", "/deployments/<int:deployment_id>/retry",
           summary="Deploy a failed deployment again with the latest pipeline version", tag=TAG,
           response=DeploymentOut, status=202)
def retry_deployment(deployment_id):
    return deployment_out(deployments.retry(_actor(), _deployment(deployment_id)))


@operation("POST", "/deployments/<int:deployment_id>/clone",
           summary="A new deployment like this one: latest pipeline version, tags changeable",
           tag=TAG, body=DeploymentClone, response=DeploymentOut, status=201)
def clone_deployment(deployment_id, data):
    source = _deployment(deployment_id, "view")
    return deployment_out(deployments.clone(_actor(), source, data.name, data.tags))


@operation("POST", "/deployments/<int:deployment_id>/extend",
           summary="Reset the auto-cleanup timer", tag=TAG, response=DeploymentOut)
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
