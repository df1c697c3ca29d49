"""Deployment pages: list, create, watch, extend, clone, retry, delete. Thin: parse the form,
ask the access module, call one service function, flash or show the outcome."""
from functools import wraps

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from app import access
from app.extensions import db
from app.models import Deployment, DeploymentEvent, Environment, Project
from app.models.types import utcnow
from app.services import deployments, pipelines
from app.services.errors import Forbidden, NotFound, ServiceError
from app.services.specs import service_urls
from app.states import DEPLOYMENT_STATUSES
from app.ui import bp
from app.ui.deploy_forms import CloneForm, DeploymentForm, submitted_tags
from app.ui.forms import EmptyForm
from app.ui.pages import _actor

PER_PAGE = 25
HISTORY_SHOWN = 50
# While a deployment is in one of these, its page polls its status (htmx).
SETTLING = ("pending", "deploying", "deleting")


def _load(deployment_id, action="view", doing=None):
    """The deployment if the user may see it (404 otherwise, as if it did not exist); a
    refused change is a 403 page, never a flash that looks like a validation problem."""
    try:
        deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment")
    except NotFound:
        abort(404)
    access.require(current_user, action, deployment, doing)
    return deployment


def deployment_action(action="deploy", doing=None):
    """A button on the deployment page: CSRF-checked, access-checked before the service runs
    (refused: the 403 page, naming `doing`, e.g. "delete"); any other ServiceError becomes a
    flash on the page it came from."""

    def decorator(fn):
        @wraps(fn)
        def wrapper(deployment_id):
            back = url_for("ui.deployment_detail", deployment_id=deployment_id)
            if not EmptyForm().validate_on_submit():
                flash("The form expired; reload the page and try again.", "error")
                return redirect(back)
            deployment = _load(deployment_id, action, doing)
            try:
                result = fn(deployment)
            except Forbidden:
                raise
            except NotFound:
                abort(404)
            except ServiceError as exc:
                db.session.rollback()
                flash(exc.message, "error")
                return redirect(back)
            return result or redirect(back)

        return wrapper

    return decorator


def _service_steps(version):
    return deployments.service_steps(version) if version else []


def _visible(model):
    return db.session.scalars(access.visible(current_user, model).order_by(model.name)).all()


def _deploy_targets(selected_project_id=None):
    """(projects the user may deploy somewhere, the selected one, the environments it may go to)."""
    environments = _visible(Environment)
    projects = [p for p in _visible(Project)
                if any(access.can_deploy_to(current_user, p, e) for e in environments)]
    project = next((p for p in projects if p.id == selected_project_id), projects[0] if projects else None)
    targets = [e for e in environments if project and access.can_deploy_to(current_user, project, e)]
    return projects, project, targets


def _may_deploy_somewhere():
    environments = _visible(Environment)
    return any(access.can_deploy_to(current_user, p, e)
               for p in _visible(Project) for e in environments)


# --- the list ---------------------------------------------------------------------------------
@bp.get("/deployments")
def deployment_list():
    filters = {key: request.args.get(key, type=int) for key in ("project", "environment")}
    status = request.args.get("status", "")
    page = max(request.args.get("page", 1, type=int), 1)
    stmt = access.visible(current_user, Deployment)
    if filters["project"]:
        stmt = stmt.where(Deployment.project_id == filters["project"])
    if filters["environment"]:
        stmt = stmt.where(Deployment.environment_id == filters["environment"])
    # Deleted ones stay for the history; the list shows them only when asked for.
    if status in DEPLOYMENT_STATUSES:
        stmt = stmt.where(Deployment.status == status)
    else:
        stmt = stmt.where(Deployment.status != "deleted")
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = db.session.scalars(
        stmt.options(selectinload(Deployment.project), selectinload(Deployment.environment),
                     selectinload(Deployment.created_by),
                     selectinload(Deployment.pipeline_version))
        .order_by(Deployment.created_at.desc(), Deployment.id.desc())
        .limit(PER_PAGE).offset((page - 1) * PER_PAGE)).all()
    args = {k: v for k, v in {**filters, "status": status}.items() if v}
    now = utcnow()
    return render_template(
        "ui/deployments.html", deployments=rows, total=total, page=page,
        pages=max(1, -(-total // PER_PAGE)), args=args, status=status, filters=filters,
        projects=_visible(Project), environments=_visible(Environment),
        statuses=DEPLOYMENT_STATUSES, urls={d.id: service_urls(d) for d in rows},
        remaining={d.id: deployments.remaining_seconds(d, now) for d in rows},
        may_deploy=_may_deploy_somewhere(),
    )


# --- creating one -----------------------------------------------------------------------------
def _new_page(form, project_id, errors=None, message=None, tags=None, status=200):
    projects, project, environments = _deploy_targets(project_id)
    form.project_id.choices = [(p.id, p.name) for p in projects]
    form.environment_id.choices = [(e.id, e.name) for e in environments]
    if project is not None:
        form.project_id.data = project.id
    version = pipelines.latest_version(project) if project else None
    page = render_template(
        "ui/deployment_new.html", form=form, project=project, version=version,
        steps=_service_steps(version), projects=projects, errors=errors or {},
        message=message, tags=tags or {},
    )
    return page, status


@bp.get("/deployments/new")
def deployment_new():
    form = DeploymentForm(formdata=None)
    form.environment_id.data = request.args.get("environment_id", type=int)
    return _new_page(form, request.args.get("project_id", type=int))


@bp.post("/deployments/new")
def deployment_create():
    form = DeploymentForm()
    tags = submitted_tags()
    if not form.validate():
        problems = {name: field.errors[0] for name, field in form._fields.items() if field.errors}
        message = ("The form expired; reload the page and try again." if "csrf_token" in problems
                   else "Check the fields marked below.")
        return _new_page(form, form.project_id.data, problems, message, tags, 400)
    try:
        # The service asks access.can_deploy_to; a refusal is shown on the form like any error.
        project = access.get_visible(current_user, Project, form.project_id.data, "project")
        environment = access.get_visible(current_user, Environment, form.environment_id.data,
                                         "environment")
        deployment = deployments.create(_actor(), project, environment, form.name.data.strip(), tags)
    except ServiceError as exc:
        db.session.rollback()
        return _new_page(form, form.project_id.data, exc.fields, exc.message, tags, exc.status)
    flash(f"Deployment {deployment.name} created; it starts on node {deployment.node.name}."
          if deployment.node else f"Deployment {deployment.name} created.", "ok")
    return redirect(url_for("ui.deployment_detail", deployment_id=deployment.id))


# --- one deployment ---------------------------------------------------------------------------
def _live_context(deployment):
    events = db.session.scalars(
        access.visible(current_user, DeploymentEvent)
        .where(DeploymentEvent.deployment_id == deployment.id)
        .options(selectinload(DeploymentEvent.actor))
        .order_by(DeploymentEvent.at.desc(), DeploymentEvent.id.desc()).limit(HISTORY_SHOWN)).all()
    can_change = access.can(current_user, "deploy", deployment)
    now = utcnow()
    return {
        "deployment": deployment, "can_change": can_change, "events": events,
        "urls": service_urls(deployment) if deployment.status != "deleted" else {},
        "steps": deployment.pipeline_version.resolved["steps"],
        "remaining": deployments.remaining_seconds(deployment, now),
        "settling": deployment.status in SETTLING,
        "node_visible": deployment.node is not None and access.can(current_user, "view",
                                                                   deployment.node),
        "empty": EmptyForm(),
        "logs_unavailable": _logs_unavailable(deployment),
    }


def _logs_unavailable(deployment):
    """Why no logs can be fetched now, or None (the logs route then asks the node)."""
    if deployment.status == "deleted":
        return "the deployment is deleted"
    if deployment.node is None:
        return "the deployment has no node"
    if deployment.node.status in deployments.NO_LINK_NODE_STATUSES:
        return f"node offline ({deployment.node.name} is {deployment.node.status})"
    return None


@bp.get("/deployments/<int:deployment_id>")
def deployment_detail(deployment_id):
    deployment = _load(deployment_id)
    context = _live_context(deployment)
    clone_version = clone_form = None
    if deployment.status != "deleted" and access.can_deploy_to(current_user, deployment.project,
                                                                deployment.environment):
        clone_form = CloneForm(formdata=None)
        clone_version = pipelines.latest_version(deployment.project)
    return render_template(
        "ui/deployment.html", **context, clone_form=clone_form, clone_version=clone_version,
        clone_steps=_service_steps(clone_version),
    )


@bp.get("/deployments/<int:deployment_id>/status")
def deployment_status(deployment_id):
    """The live part of the page, polled by htmx while the deployment is settling."""
    return render_template("ui/_deployment_status.html", **_live_context(_load(deployment_id)))


@bp.post("/deployments/<int:deployment_id>/extend")
@deployment_action(doing="extend")
def deployment_extend(deployment):
    deployments.extend(_actor(), deployment)
    flash(f"Deployment {deployment.name} extended: the auto-cleanup timer starts over.", "ok")


@bp.post("/deployments/<int:deployment_id>/retry")
@deployment_action(doing="retry")
def deployment_retry(deployment):
    deployments.retry(_actor(), deployment)
    flash(f"Deployment {deployment.name} is deployed again with the latest pipeline version.", "ok")


@bp.post("/deployments/<int:deployment_id>/delete")
@deployment_action(doing="delete")
def deployment_delete(deployment):
    what = "cancelled" if deployment.status in ("pending", "deploying") else "is being deleted"
    deployments.request_delete(_actor(), deployment)
    flash(f"Deployment {deployment.name} {what}: its node removes everything it created.", "ok")


# Cloning creates a deployment: the service asks access.can_deploy_to, like the API does.
@bp.post("/deployments/<int:deployment_id>/clone")
@deployment_action("view")
def deployment_clone(deployment):
    form = CloneForm()
    if not form.validate():
        flash("Give the clone a name of at most 63 characters.", "error")
        return None
    clone = deployments.clone(_actor(), deployment, form.name.data.strip(), submitted_tags() or None)
    flash(f"Deployment {clone.name} created as a clone of {deployment.name}.", "ok")
    return redirect(url_for("ui.deployment_detail", deployment_id=clone.id))
