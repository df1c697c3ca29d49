"""Deployment pages: list, create, watch, extend, clone, retry, delete. Thin: parse the form,
ask the access module, call one service function, flash or show the outcome."""
from functools import cache, wraps
from types import SimpleNamespace

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app import access
from app.api.deployments import deployments_page
from app.extensions import db
from app.models import Deployment, DeploymentEvent, Environment, Project
from app.models.types import utcnow
from app.services import deployment_health, deployments, pipelines
from app.services.errors import Forbidden, NotFound, ServiceError
from app.services.specs import service_urls
from app.states import DEPLOYMENT_STATUSES
from app.ui import bp
from app.ui.deploy_forms import CloneForm, DeploymentForm, submitted_tags
from app.ui.forms import EmptyForm
from app.ui.pages import _actor

PER_PAGE = 25
HISTORY_SHOWN = 50


# What every deployment page reads (access, URLs, steps, logs): one query instead of five lazy
# loads, which cost the web tier more CPU than the page's own work.
@cache
def _with_parts():
    return access.by_id(Deployment).options(*(joinedload(rel) for rel in (
        Deployment.project, Deployment.environment, Deployment.node, Deployment.pipeline_version)))


def _load(deployment_id, action="view", doing=None, for_page=True):
    """The deployment if the user may see it (404 otherwise, as if it did not exist); a
    refused change is a 403 page, never a flash that looks like a validation problem.
    `for_page` loads its parts with it; an action does not, as the services lock the row
    (FOR UPDATE), which an outer join's nullable side cannot carry."""
    try:
        deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment",
                                        _with_parts() if for_page else None)
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
            deployment = _load(deployment_id, action, doing, for_page=False)
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


def _deploy_targets(selected_project_id=None):
    """(projects the user may deploy somewhere, as (id, name) rows; the selected one, loaded;
    the environments it may go to, as rows)."""
    user, environments = _actor(), _names(Environment)
    named = _names(Project)
    allowed = access.deployable_projects(user, [p.id for p in named], [e.id for e in environments])
    projects = [p for p in named if p.id in allowed]
    chosen = next((p for p in projects if p.id == selected_project_id), projects[0] if projects else None)
    project = db.session.get(Project, chosen.id) if chosen else None
    targets = [e for e in environments if chosen and access.may_deploy_ids(user, chosen.id, e.id)]
    return projects, project, targets


def _names(model):
    """(id, name) of the rows of `model` the user may view, by name: a filter's options."""
    return db.session.execute(access.visible(current_user, model)
                              .with_only_columns(model.id, model.name).order_by(model.name)).all()


# --- the list ---------------------------------------------------------------------------------
@bp.get("/deployments")
def deployment_list():
    filters = {key: request.args.get(key, type=int) for key in ("project", "environment")}
    status = request.args.get("status", "")
    status = status if status in DEPLOYMENT_STATUSES else ""
    page = max(request.args.get("page", 1, type=int), 1)
    listed = deployments_page(SimpleNamespace(
        project_id=filters["project"] or None, environment_id=filters["environment"] or None,
        status=status or None, include_deleted=False, page=page, per_page=PER_PAGE))
    total = listed["total"]
    args = {k: v for k, v in {**filters, "status": status}.items() if v}
    return render_template(
        "ui/deployments.html", deployments=listed["items"], total=total, page=page,
        pages=max(1, -(-total // PER_PAGE)), args=args, status=status, filters=filters,
        projects=_names(Project), environments=_names(Environment),
        statuses=DEPLOYMENT_STATUSES, may_deploy=access.may_deploy_somewhere(current_user),
    )


# --- creating one -----------------------------------------------------------------------------
def _new_page(form, project_id, errors=None, message=None, tags=None, status=200):
    projects, project, environments = _deploy_targets(project_id)
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
def _live_context(deployment, history=False):
    # The deployment's visibility was checked when it was loaded: its events need no other filter.
    events = db.session.scalars(
        select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment.id)
        .options(joinedload(DeploymentEvent.actor))
        .order_by(DeploymentEvent.at.desc(), DeploymentEvent.id.desc()).limit(HISTORY_SHOWN)).all() \
        if history else []
    can_change = access.can(current_user, "deploy", deployment)
    now = utcnow()
    return {
        "deployment": deployment, "can_change": can_change, "events": events,
        "urls": service_urls(deployment) if deployment.status != "deleted" else {},
        "steps": deployment.pipeline_version.resolved["steps"],
        "remaining": deployments.remaining_seconds(deployment, now),
        # The page's island polls the live state (GET /api/v1/deployments/<id>/live) and asks
        # the server-rendered parts again when it changes; a deleted deployment changes no more.
        "follows": deployment.status != "deleted",
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


def _graph(version):
    """The pipeline version as the graph island draws it ({nodes, edges} like a definition):
    from the resolved steps, which every version has, with the editor's positions when the
    definition kept them (elkjs lays out the others)."""
    positions = {node.get("id"): node.get("position")
                 for node in (version.definition or {}).get("nodes") or [] if isinstance(node, dict)}
    steps = version.resolved["steps"]
    nodes = [{"id": step["id"], step["kind"]: step.get(step["kind"]) or step["id"],
              **({"position": positions[step["id"]]} if positions.get(step["id"]) else {})}
             for step in steps]
    edges = [{"from": dep, "to": step["id"]} for step in steps for dep in step.get("depends_on") or ()]
    return {"nodes": nodes, "edges": edges}


@bp.get("/deployments/<int:deployment_id>")
def deployment_detail(deployment_id):
    deployment = _load(deployment_id)
    context = _live_context(deployment, history=True)
    context["graph"] = _graph(deployment.pipeline_version)
    context["live"] = deployment_health.read(deployment.id)  # visibility checked by _load
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
    """The page's head (status, summary, buttons), asked again when the live state changes."""
    return render_template("ui/_deployment_status.html", **_live_context(_load(deployment_id)))


@bp.get("/deployments/<int:deployment_id>/history")
def deployment_history(deployment_id):
    """The page's steps and history, asked again when the live state changes."""
    return render_template("ui/_deployment_history.html",
                           **_live_context(_load(deployment_id), history=True))


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
