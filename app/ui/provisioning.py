"""Node pages: what the controller's Ansible runs did on a node's host, retry a failed
onboarding, decommission, cancel (issue 16). Admins only, as the API."""
from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select

from app import access
from app.extensions import db
from app.models import Environment, Node, ProvisioningEvent, ProvisioningRun
from app.services import onboarding, provisioning
from app.services.errors import NotFound
from app.ui import bp
from app.ui.environments import _load, _to_environment, _to_node, _valid
from app.ui.forms import EmptyForm, SshNodeForm
from app.ui.pages import _actor, service_call

RUNS_SHOWN = 5
TASK_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")


def node_runs(node):
    """(latest runs, the tasks of the newest one as (task, outcome, message)) for the node page."""
    runs = db.session.scalars(select(ProvisioningRun).where(ProvisioningRun.node_id == node.id)
                              .order_by(ProvisioningRun.id.desc()).limit(RUNS_SHOWN)).all()
    tasks = []
    if runs:
        events = db.session.scalars(select(ProvisioningEvent).where(
            ProvisioningEvent.run_id == runs[0].id, ProvisioningEvent.event.in_(TASK_EVENTS))
            .order_by(ProvisioningEvent.counter)).all()
        for event in events:
            result = (event.data or {}).get("res", {})
            outcome = event.event.removeprefix("runner_on_")
            if outcome == "ok" and result.get("changed"):
                outcome = "changed"
            failed = outcome in ("failed", "unreachable")
            tasks.append((event.task, outcome, result.get("msg", "") if failed else ""))
    return runs, tasks


@bp.get("/nodes/<int:node_id>/provisioning")
def node_provisioning(node_id):
    """The provisioning part of the node page, polled by htmx while a run goes on."""
    from app.ui.environments import _provisioning

    node = _load(Node, node_id, "manage")
    return render_template("ui/_node_provisioning.html", node=node, provisioning=_provisioning(node),
                           empty=EmptyForm())


@bp.post("/environments/<int:environment_id>/nodes/provision")
@service_call(_to_environment)
def node_provision(environment_id):
    environment = _load(Environment, environment_id)
    access.require(current_user, "create", Node)
    form = _valid(SshNodeForm())
    host = form.host.data.strip()
    ssh = {"host": (form.ssh_host.data or "").strip() or host, "port": form.ssh_port.data,
           "user": form.ssh_user.data.strip(), "private_key": form.private_key.data or None,
           "password": form.password.data or None, "become": bool(form.become.data)}
    node, _run = onboarding.add_over_ssh(_actor(), environment, form.name.data.strip(), host,
                                         form.port.data, ssh)
    flash(f"Node {node.name} added: the controller sets its host up over SSH now.", "ok")
    return redirect(_to_node(node.id))


@bp.post("/environments/<int:environment_id>/upgrade-agents")
@service_call(_to_environment)
def environment_upgrade_agents(environment_id):
    environment = _load(Environment, environment_id)
    access.require_admin(current_user, "upgrade agents")
    runs, skipped = onboarding.upgrade_agents(_actor(), environment)
    left = "; ".join(f"{s['node']}: {s['reason']}" for s in skipped)
    skipped_text = f" Skipped {left}." if left else ""
    flash(f"Upgrading the agent of {len(runs)} node(s) to this version.{skipped_text}", "ok")


@bp.post("/nodes/<int:node_id>/provision/retry")
@service_call(_to_node)
def node_provision_retry(node_id):
    node = _load(Node, node_id, "manage")
    onboarding.retry(_actor(), node)
    flash(f"Onboarding node {node.name} again: the controller runs it now.", "ok")


@bp.post("/nodes/<int:node_id>/decommission")
@service_call(_to_node)
def node_decommission(node_id):
    node = _load(Node, node_id, "manage")
    onboarding.decommission(_actor(), node)
    flash(f"Decommissioning node {node.name}: the controller removes the agent and everything it made "
          "from the host, then the node.", "ok")


def _to_run_node(run_id, **_):
    run = db.session.get(ProvisioningRun, run_id)
    if run is not None and run.node_id is not None:
        return url_for("ui.node_detail", node_id=run.node_id)
    return url_for("ui.environment_list")


@bp.post("/provisioning-runs/<int:run_id>/cancel")
@service_call(_to_run_node)
def provisioning_run_cancel(run_id):
    try:
        run = access.get_visible(current_user, ProvisioningRun, run_id, "provisioning run")
    except NotFound:
        abort(404)
    provisioning.cancel(_actor(), run)
    flash(f"Run {run.id} is being cancelled.", "ok")
