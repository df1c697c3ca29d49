"""Environments and their nodes. Thin: parse the form, call one service, flash the outcome."""

from functools import cache

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import joinedload, undefer

from app import access
from app.extensions import db
from app.models import Environment, Node
from app.services import admission, catalog, nodes
from app.services.errors import NotFound, ValidationFailed
from app.services.specs import url_pattern
from app.ui import bp, shown_once
from app.ui.forms import (
    EmptyForm,
    EnvironmentForm,
    EnvironmentSettingsForm,
    NodeForm,
    NodeSettingsForm,
    SshNodeForm,
    ThumbprintForm,
)
from app.ui.pages import _actor, service_call

NODES_PER_PAGE = 25


def _load(model, obj_id, action="view", doing=None, stmt=None):
    """The object if the user may see it (404 otherwise); then the action, refused as a 403
    that names `doing` ("delete") when given. `stmt`: see access.get_visible."""
    try:
        obj = access.get_visible(current_user, model, obj_id, model.__tablename__.rstrip("s"), stmt)
    except NotFound:
        abort(404)
    access.require(current_user, action, obj, doing)
    return obj


def _valid(form):
    """The form's fields, checked; the first problem is the message, each one named by field."""
    if not form.validate():
        problems = {field.name: field.errors[0] for field in form if field.errors}
        first = next(field for field in form if field.errors)
        raise ValidationFailed(f"{first.label.text}: {first.errors[0]}", problems)
    return form


def _show_once(node, token, command, message):
    shown_once.remember("node_token", {"node_id": node.id, "token": token, "command": command,
                                       "message": message})


def _pop_shown_once(node):
    shown = shown_once.take("node_token")
    return shown if shown and shown.get("node_id") == node.id else None


def _to_environment(environment_id, **_):
    return url_for("ui.environment_detail", environment_id=environment_id)


def _to_node(node_id, **_):
    return url_for("ui.node_detail", node_id=node_id)


def _problem(exc):
    """What a page shows of a refused form: its message, its fields, its status."""
    return {"message": exc.message, "errors": exc.fields} if exc else {}


def _node_counts(environment_ids):
    """{environment id: {status: number of nodes}} the user may see, counted in one query."""
    visible = access.visible(current_user, Node).where(Node.environment_id.in_(environment_ids)).subquery()
    counts = {}
    for environment_id, status, number in db.session.execute(
            select(visible.c.environment_id, visible.c.status, func.count())
            .group_by(visible.c.environment_id, visible.c.status)):
        counts.setdefault(environment_id, {})[status] = number
    return counts


def _environments_page(exc=None):
    rows = db.session.scalars(access.visible(current_user, Environment).order_by(Environment.name)).all()
    form = EnvironmentForm() if access.can(current_user, "create", Environment) else None
    return render_template("ui/environments.html", environments=rows, form=form,
                           url_form=url_pattern(), counts=_node_counts([e.id for e in rows]),
                           **_problem(exc)), exc.status if exc else 200


@bp.get("/environments")
def environment_list():
    return _environments_page()


@bp.post("/environments")
@service_call(lambda: url_for("ui.environment_list"), reshow=lambda exc: _environments_page(exc))
def environment_create():
    access.require(current_user, "create", Environment)
    form = _valid(EnvironmentForm())
    environment = catalog.create(
        _actor(), Environment, form.name.data.strip(), form.description.data or "",
        base_domain=form.base_domain.data.strip(), cleanup_minutes=form.cleanup_minutes.data,
        **({"cpu_overcommit": form.cpu_overcommit.data} if form.cpu_overcommit.data is not None else {}),
    )
    flash(f"Environment {environment.name} created.", "ok")
    return redirect(_to_environment(environment.id))


@cache
def _node_counts_stmt():
    return (select(Node.status, func.count()).where(Node.environment_id == bindparam("environment_id"))
            .group_by(Node.status))


@cache
def _node_page_stmt():
    return (select(Node).where(Node.environment_id == bindparam("environment_id"))
            .order_by(Node.name, Node.id).limit(bindparam("limit")).offset(bindparam("offset")))


def _environment_page(environment_id, exc=None, which=None):
    """The environment's page; after a refused form (`which`: settings or node) that form as
    typed with its problem, the other one fresh."""
    environment = _load(Environment, environment_id)
    page = max(request.args.get("page", 1, type=int), 1)
    # Whoever may view an environment may view each of its nodes (access: a node is visible
    # with its environment), so its nodes need no other filter: statements built once.
    params = {"environment_id": environment.id}
    counts = dict(db.session.execute(_node_counts_stmt(), params).all())
    total = sum(counts.values())
    rows = db.session.scalars(_node_page_stmt(), {**params, "limit": NODES_PER_PAGE,
                                             "offset": (page - 1) * NODES_PER_PAGE}).all()
    can_manage = access.can(current_user, "manage", environment)

    def bound(name):
        return {} if which == name else {"formdata": None}

    return render_template(
        "ui/environment.html", environment=environment, nodes=rows, can_manage=can_manage,
        counts=counts, total=total, page=page, pages=max(1, -(-total // NODES_PER_PAGE)),
        settings_form=EnvironmentSettingsForm(obj=environment, **bound("settings")) if can_manage else None,
        node_form=NodeForm(**bound("node")) if access.can(current_user, "create", Node) else None,
        ssh_node_form=SshNodeForm() if access.can(current_user, "create", Node) else None,
        which=which, **_problem(exc),
    ), exc.status if exc else 200


@bp.get("/environments/<int:environment_id>")
def environment_detail(environment_id):
    return _environment_page(environment_id)


def _reshow_environment(which):
    return lambda exc, environment_id: _environment_page(environment_id, exc, which)


@bp.post("/environments/<int:environment_id>/settings")
@service_call(_to_environment, reshow=_reshow_environment("settings"))
def environment_settings(environment_id):
    environment = _load(Environment, environment_id, "manage", "change")
    form = _valid(EnvironmentSettingsForm())
    catalog.update(_actor(), environment, description=form.description.data or "",
                   base_domain=form.base_domain.data.strip(),
                   cleanup_minutes=form.cleanup_minutes.data, cpu_overcommit=form.cpu_overcommit.data)
    flash("Settings saved.", "ok")


@bp.post("/environments/<int:environment_id>/nodes")
@service_call(_to_environment, reshow=_reshow_environment("node"))
def node_create(environment_id):
    environment = _load(Environment, environment_id)
    access.require(current_user, "create", Node)
    form = _valid(NodeForm())
    node, token, command = nodes.add(_actor(), environment, form.name.data.strip(),
                                     form.host.data.strip(), form.port.data)
    _show_once(node, token, command, nodes.TOKEN_SHOWN_ONCE)
    return redirect(_to_node(node.id))


@cache
def _node_with_parts():
    """The node with what its page shows (admission's deferred columns, its environment): one
    query instead of four."""
    return access.by_id(Node).options(
        undefer(Node.cpu_overcommit), undefer(Node.memory_reserve_mb),
        undefer(Node.reported_cpu_percent), joinedload(Node.environment))


def _node_page(node_id, exc=None, which=None):
    node = _load(Node, node_id, stmt=_node_with_parts())
    can_manage = access.can(current_user, "manage", node)
    shown_once = _pop_shown_once(node) if can_manage and exc is None else None

    def bound(name):
        return {} if which == name else {"formdata": None}

    page = render_template(
        "ui/node.html", node=node, can_manage=can_manage, shown_once=shown_once,
        allocation=admission.allocation(node, current_user),
        holds_deployments=can_manage and nodes.holds_deployments(node.id),
        settings_form=NodeSettingsForm(obj=node, **bound("settings")) if can_manage else None,
        thumbprint_form=ThumbprintForm(**bound("thumbprint")), empty=EmptyForm(),
        provisioning=_provisioning(node) if can_manage else None,
        which=which, **_problem(exc),
    )
    # The token is on this page once: no cache may keep a copy.
    return page, exc.status if exc else 200, {"Cache-Control": "no-store"}


@bp.get("/nodes/<int:node_id>")
def node_detail(node_id):
    return _node_page(node_id)


def _reshow_node(which):
    return lambda exc, node_id: _node_page(node_id, exc, which)


def _provisioning(node):
    from app.ui.provisioning import node_runs  # the module imports this one

    runs, tasks = node_runs(node)
    return {"over_ssh": node.ssh_access is not None, "runs": runs, "tasks": tasks,
            "active": bool(runs) and runs[0].status in ("pending", "running")}


@bp.post("/nodes/<int:node_id>/settings")
@service_call(_to_node, reshow=_reshow_node("settings"))
def node_settings(node_id):
    node = _load(Node, node_id, "manage", "change")
    form = _valid(NodeSettingsForm())
    nodes.update(_actor(), node, host=form.host.data.strip(), port=form.port.data,
                 cpus_override=form.cpus_override.data,
                 memory_mb_override=form.memory_mb_override.data,
                 cpu_overcommit=form.cpu_overcommit.data, memory_reserve_mb=form.memory_reserve_mb.data)
    flash("Node settings saved.", "ok")


@bp.post("/nodes/<int:node_id>/rotate-token")
@service_call(_to_node)
def node_rotate_token(node_id):
    node, token, command = nodes.rotate_token(_actor(), _load(Node, node_id, "manage", "rotate the token of"))
    _show_once(node, token, command, nodes.ROTATED_MESSAGE)


@bp.post("/nodes/<int:node_id>/revoke-token")
@service_call(_to_node)
def node_revoke_token(node_id):
    node = nodes.revoke_token(_actor(), _load(Node, node_id, "manage", "revoke the token of"))
    flash(f"The token of node {node.name} is revoked; issue a new token to let it back in.", "ok")


@bp.post("/nodes/<int:node_id>/approve-thumbprint")
@service_call(_to_node, reshow=_reshow_node("thumbprint"))
def node_approve_thumbprint(node_id):
    node = _load(Node, node_id, "manage", "approve a certificate of")
    form = _valid(ThumbprintForm())
    nodes.approve_thumbprint(_actor(), node, form.thumbprint.data)
    flash(f"The new certificate of node {node.name} is trusted; reconnecting.", "ok")


@bp.post("/nodes/<int:node_id>/enable")
@service_call(_to_node)
def node_enable(node_id):
    node = nodes.set_enabled(_actor(), _load(Node, node_id, "manage", "enable"), True)
    flash(f"Node {node.name} enabled.", "ok")


@bp.post("/nodes/<int:node_id>/disable")
@service_call(_to_node)
def node_disable(node_id):
    node = nodes.set_enabled(_actor(), _load(Node, node_id, "manage", "disable"), False)
    flash(f"Node {node.name} disabled: no new deployments go there; the ones there keep running and "
          "can be deleted, and NullOps stays linked until the last is gone.", "ok")


@bp.post("/nodes/<int:node_id>/delete")
@service_call(_to_node)
def node_delete(node_id):
    node = _load(Node, node_id, "manage", "delete")
    environment_id, name = node.environment_id, node.name
    nodes.delete(_actor(), node, force=request.form.get("force") == "1")
    flash(f"Node {name} deleted.", "ok")
    return redirect(_to_environment(environment_id))
