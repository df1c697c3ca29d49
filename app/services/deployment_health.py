"""What a deployment's page polls while it is open (issue 15): its status, each step's state and
each service's health, from what the agent reported and the controller stored.

Hot path: every open deployment page asks this every 2 s, so it is one indexed query (the
deployment by its key, the visibility filter, its version's key, and the few events that speak
about health: restarts and failed steps, through the deployment_id index) and no agent call.
The service step ids come from VERSION_PORTS, read once per process (versions never change).

Health of a service, from the agent's reports:
- waiting: its run has not reached it; starting: its container runs, readiness is being probed;
- ready: its readiness probe passed and the deployment is ready;
- failing: its readiness failed (or its container would not start); message: the agent's last word;
- restarting: the deployment is degraded (the agent restarts or recreates services);
- unknown: the node is offline; stopped: the run failed and was rolled back, or the step was
  skipped or cancelled; removing / removed: the deployment is being deleted or is gone.
Restarts: how often the agent's reconcile restarted or recreated it (kind "restart" events, kept
as long as the history is, docs/deployments.md).
"""
import functools
from collections import Counter

from sqlalchemy import bindparam, or_, select

from app import access
from app.extensions import db
from app.models import Deployment, DeploymentEvent, PipelineVersion
from app.services.specs import VERSION_PORTS

RESTART = "restart"
STEP = "step"
STOPPING = ("deleting", "cleanup_failed")


@functools.cache
def _query(restricted, dialect):
    failed_step = (DeploymentEvent.kind == STEP) & (
        DeploymentEvent.data["step_status"].as_string() == "failed")
    stmt = (select(Deployment.id, Deployment.status, Deployment.status_message,
                   Deployment.status_changed_at, Deployment.progress, Deployment.run_id,
                   Deployment.pipeline_version_id,
                   PipelineVersion.created_at.label("version_created_at"),
                   DeploymentEvent.kind, DeploymentEvent.data, DeploymentEvent.message)
            .join(PipelineVersion, PipelineVersion.id == Deployment.pipeline_version_id)
            .outerjoin(DeploymentEvent, (DeploymentEvent.deployment_id == Deployment.id)
                       & or_(DeploymentEvent.kind == RESTART, failed_step))
            .where(Deployment.id == bindparam("deployment_id"))
            .order_by(DeploymentEvent.id))
    return stmt.where(access.deployments_visible(dialect)) if restricted else stmt


def read(deployment_id, visibility=None):
    """The live state of a deployment as the API shows it (DeploymentLive), or None when it does
    not exist or `visibility` (access.visibility_params) hides it."""
    rows = db.session.connection().execute(
        _query(visibility is not None, db.engine.dialect.name),
        {"deployment_id": deployment_id, **(visibility or {})}).all()
    if not rows:
        return None
    first = rows[0]._mapping
    version = (first["pipeline_version_id"], first["version_created_at"])
    service_ids = list(VERSION_PORTS.of({version})[version])
    events = [row._mapping for row in rows if row.kind is not None]
    progress = dict(first["progress"] or {})
    services = service_health(first["status"], first["status_message"], first["run_id"],
                              progress, service_ids, events)
    steps = {step_id: state for step_id, state in progress.items()}
    steps.update({step_id: shown["health"] for step_id, shown in services.items()})
    return {"id": first["id"], "status": first["status"], "status_message": first["status_message"],
            "status_changed_at": first["status_changed_at"], "steps": steps, "services": services}


def service_health(status, status_message, run_id, progress, service_ids, events):
    """{service step id: {"health", "message", "restarts"}} (see the module's docstring);
    `events` are the deployment's restart and failed-step events, oldest first, as mappings
    with kind, data and message."""
    restarts, failures = Counter(), {}
    for event in events:
        data = event["data"] or {}
        if event["kind"] == RESTART:
            restarts.update(set(data.get("steps") or ()))
        elif data.get("run_id") == run_id and data.get("step_id"):
            failures[data["step_id"]] = data.get("message") or event["message"]
    return {step_id: {**_health(status, status_message, progress.get(step_id),
                                failures.get(step_id)), "restarts": restarts[step_id]}
            for step_id in service_ids}


def _health(status, status_message, step, failure):
    if status == "deleted":
        return {"health": "removed", "message": None}
    if status in STOPPING:
        return {"health": "removing", "message": None}
    if step == "failed":
        return {"health": "failing", "message": failure or status_message or None}
    if status == "offline":
        return {"health": "unknown", "message": status_message or "its node is offline"}
    if status == "failed":
        return {"health": "stopped", "message": "the run failed and was rolled back"}
    if step in ("skipped", "cancelled"):
        return {"health": "stopped", "message": f"step {step}"}
    if step == "running":
        return {"health": "starting", "message": None}
    if status == "degraded":
        return {"health": "restarting", "message": status_message or None}
    if status == "ready" or (step == "done" and status == "deploying"):
        return {"health": "ready", "message": None}
    return {"health": "waiting", "message": None}
