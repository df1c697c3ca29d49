"""Environments and their nodes. Thin: parse the form, call one service, flash the outcome."""

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

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
    ThumbprintForm,
)
from app.ui.pages import _actor, service_call

NODES_PER_PAGE = 25


def _load(model, obj_id, action="view"):
    try:
        obj = access.get_visible(current_user, model, obj_id, model.__tablename__.rstrip("s"))
    except NotFound:
        abort(404)
    access.require(current_user, action, obj)
    return obj


def _valid(form):
    """The form's fields, checked; the first problem becomes the flashed message."""
    if not form.validate():
        for field in form:
            if field.errors:
                raise ValidationFailed(f"{field.label.text}: {field.errors[0]}")
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


@bp.get("/environments")
def environment_list():
    rows = db.session.scalars(access.visible(current_user, Environment).order_by(Environment.name)).all()
    form = EnvironmentForm() if access.can(current_user, "create", Environment) else None
    return render_template("ui/environments.html", environments=rows, form=form,
                           url_form=url_pattern(), counts=_node_counts([e.id for e in rows]))


def _node_counts(environment_ids):
    """{environment id: {status: number of nodes}} the user may see, counted in one query."""
    visible = access.visible(current_user, Node).where(Node.environment_id.in_(environment_ids)).subquery()
    counts = {}
    for environment_id, status, number in db.session.execute(
            select(visible.c.environment_id, visible.c.status, func.count())
            .group_by(visible.c.environment_id, visible.c.status)):
        counts.setdefault(environment_id, {})[status] = number
    return counts


@bp.post("/environments")
@service_call(lambda: url_for("ui.environment_list"))
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


@bp.get("/environments/<int:environment_id>")
def environment_detail(environment_id):
    environment = _load(Environment, environment_id)
    page = max(request.args.get("page", 1, type=int), 1)
    counts = _node_counts([environment.id]).get(environment.id, {})
    total = sum(counts.values())
    rows = db.session.scalars(
        access.visible(current_user, Node).where(Node.environment_id == environment.id)
        .order_by(Node.name, Node.id).limit(NODES_PER_PAGE).offset((page - 1) * NODES_PER_PAGE)
    ).all()
    can_manage = access.can(current_user, "manage", environment)
    return render_template(
        "ui/environment.html", environment=environment, nodes=rows, can_manage=can_manage,
        counts=counts, total=total, page=page, pages=max(1, -(-total // NODES_PER_PAGE)),
        settings_form=EnvironmentSettingsForm(obj=environment) if can_manage else None,
        node_form=NodeForm() if access.can(current_user, "create", Node) else None,
    )


@bp.post("/environments/<int:environment_id>/settings")
@service_call(_to_environment)
def environment_settings(environment_id):
    environment = _load(Environment, environment_id, "manage")
    form = _valid(EnvironmentSettingsForm())
    catalog.update(_actor(), environment, description=form.description.data or "",
                   base_domain=form.base_domain.data.strip(),
                   cleanup_minutes=form.cleanup_minutes.data, cpu_overcommit=form.cpu_overcommit.data)
    flash("Settings saved.", "ok")


@bp.post("/environments/<int:environment_id>/nodes")
@service_call(_to_environment)
def node_create(environment_id):
    environment = _load(Environment, environment_id)
    access.require(current_user, "create", Node)
    form = _valid(NodeForm())
    node, token, command = nodes.add(_actor(), environment, form.name.data.strip(),
                                     form.host.data.strip(), form.port.data)
    _show_once(node, token, command, nodes.TOKEN_SHOWN_ONCE)
    return redirect(_to_node(node.id))


@bp.get("/nodes/<int:node_id>")
def node_detail(node_id):
    node = _load(Node, node_id)
    can_manage = access.can(current_user, "manage", node)
    shown_once = _pop_shown_once(node) if can_manage else None
    page = render_template(
        "ui/node.html", node=node, can_manage=can_manage, shown_once=shown_once,
        allocation=admission.allocation(node, current_user),
        holds_deployments=can_manage and nodes.holds_deployments(node.id),
        settings_form=NodeSettingsForm(obj=node) if can_manage else None,
        thumbprint_form=ThumbprintForm(), empty=EmptyForm(),
    )
    # The token is on this page once: no cache may keep a copy.
    return page, 200, {"Cache-Control": "no-store"}


@bp.post("/nodes/<int:node_id>/settings")
@service_call(_to_node)
def node_settings(node_id):
    node = _load(Node, node_id, "manage")
    form = _valid(NodeSettingsForm())
    nodes.update(_actor(), node, host=form.host.data.strip(), port=form.port.data,
                 cpus_override=form.cpus_override.data,
                 memory_mb_override=form.memory_mb_override.data,
                 cpu_overcommit=form.cpu_overcommit.data, memory_reserve_mb=form.memory_reserve_mb.data)
    flash("Node settings saved.", "ok")


@bp.post("/nodes/<int:node_id>/rotate-token")
@service_call(_to_node)
def node_rotate_token(node_id):
    node, token, command = nodes.rotate_token(_actor(), _load(Node, node_id, "manage"))
    _show_once(node, token, command, nodes.ROTATED_MESSAGE)


@bp.post("/nodes/<int:node_id>/revoke-token")
@service_call(_to_node)
def node_revoke_token(node_id):
    node = nodes.revoke_token(_actor(), _load(Node, node_id, "manage"))
    flash(f"The token of node {node.name} is revoked; issue a new token to let it back in.", "ok")


@bp.post("/nodes/<int:node_id>/approve-thumbprint")
@service_call(_to_node)
def node_approve_thumbprint(node_id):
    node = _load(Node, node_id, "manage")
    form = _valid(ThumbprintForm())
    nodes.approve_thumbprint(_actor(), node, form.thumbprint.data)
    flash(f"The new certificate of node {node.name} is trusted; reconnecting.", "ok")


@bp.post("/nodes/<int:node_id>/enable")
@service_call(_to_node)
def node_enable(node_id):
    node = nodes.set_enabled(_actor(), _load(Node, node_id, "manage"), True)
    flash(f"Node {node.name} enabled.", "ok")


@bp.post("/nodes/<int:node_id>/disable")
@service_call(_to_node)
def node_disable(node_id):
    node = nodes.set_enabled(_actor(), _load(Node, node_id, "manage"), False)
    flash(f"Node {node.name} disabled: no new deployments go there; the ones there keep running and "
          "can be deleted, and NullOps stays linked until the last is gone.", "ok")


@bp.post("/nodes/<int:node_id>/delete")
@service_call(_to_node)
def node_delete(node_id):
    node = _load(Node, node_id, "manage")
    environment_id, name = node.environment_id, node.name
    nodes.delete(_actor(), node, force=request.form.get("force") == "1")
    flash(f"Node {name} deleted.", "ok")
    return redirect(_to_environment(environment_id))
