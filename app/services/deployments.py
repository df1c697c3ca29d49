"""Deployments: create, clone, retry, extend, delete, auto-cleanup, their history and live data.

These functions only write rows. The controller picks them up and talks to the agents: it hands
`pending` deployments to their node (-> deploying -> ready or failed) and removes `deleting`
ones (-> deleted, or cleanup_failed and retried). Every status change goes through
app/states.py. Only the live logs and metrics reach an agent from here, through the
controller's internal endpoint (app/services/live.py).

Each change validates fully before it writes; an error leaves nothing behind. Event kinds
written here: created, cloned, retried, extended, delete_requested, deleted.
"""
import fnmatch
import re
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from agent import protocol
from agent.spec import secret_names
from app import access
from app.extensions import db
from app.models import Deployment, DeploymentEvent, Environment, Project, ProjectSecret, Registry
from app.models.types import utcnow
from app.services import admission, audit, live, registries
from app.services.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.services.names import DNS_LABEL_HINT, DNS_LABEL_PATTERN, check
from app.services.pipelines import latest_version
from app.services.specs import forget_spec
from app.states import LIVE_DEPLOYMENT_STATUSES, TransitionError, move_deployment

REMOVING_STATUSES = ("deleting", "cleanup_failed", "deleted")
# Live and not being removed: what may be extended, deleted and expires.
ACTIVE_STATUSES = tuple(s for s in LIVE_DEPLOYMENT_STATUSES if s not in REMOVING_STATUSES)
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"   # Docker's tag grammar
TAG_HINT = "1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
HOST_NAME_MAX = 253
TAIL_MAX = 10000
LIVE_TIMEOUT_S = 30
NO_LINK_NODE_STATUSES = ("pending", "offline")  # the controller holds no link to these


# --- small helpers ------------------------------------------------------------------------------
def _who(actor):
    return getattr(actor, "username", None) or "system"


def _lock(deployment):
    """Re-read the row under a row lock: the controller changes its status at the same time
    (SQLite ignores the lock; it has one writer anyway)."""
    db.session.refresh(deployment, with_for_update=True)
    return deployment


def _move(deployment, status, message):
    try:
        return move_deployment(deployment, status, message)
    except TransitionError as exc:
        raise Conflict(f"{exc}; reload the deployment and try again",
                       {"status": deployment.status}) from None


def record_event(deployment, kind, actor=None, message="", data=None):
    """One line of the deployment's history, added to the session (the caller commits)."""
    if deployment.id is None:
        db.session.flush()
    event = DeploymentEvent(deployment_id=deployment.id, kind=kind[:32], at=utcnow(),
                            actor_id=getattr(actor, "id", None), message=(message or "")[:1000],
                            data=data)
    db.session.add(event)
    return event


def _require_version(project):
    version = latest_version(project)
    if version is None:
        raise ValidationFailed(f"the project has no pipeline yet: an admin saves {project.name}'s "
                               "pipeline before anyone can deploy it", {"project_id": "no pipeline yet"})
    return version


def service_steps(version):
    return [step for step in version.resolved.get("steps", []) if step.get("kind") == "service"]


def _selectable_ids(version):
    return {step["id"] for step in service_steps(version) if step.get("tag_mode") == "selectable"}


# --- checks -------------------------------------------------------------------------------------
def _require_deploy(actor, project, environment):
    for obj, label in ((project, "project"), (environment, "environment")):
        if not access.can(actor, "view", obj):
            raise NotFound(f"{label} {obj.id} does not exist")
    if not access.can_deploy_to(actor, project, environment):
        raise Forbidden(f"you may not deploy {project.name} to {environment.name}: it takes Full "
                        "Access on the project or the environment; ask an admin for access")


def _name_taken(environment, name):
    return Conflict(f"a deployment named {name!r} exists in {environment.name} (a deployment being "
                    "deleted keeps its name until it is gone); choose another name",
                    {"name": f"already taken in {environment.name}"})


def _check_name(environment, name, version):
    check("name", name, DNS_LABEL_PATTERN, DNS_LABEL_HINT)
    taken = db.session.scalar(select(Deployment.id).where(
        Deployment.environment_id == environment.id, Deployment.name == name,
        Deployment.deleted_at.is_(None)).limit(1))
    if taken is not None:
        raise _name_taken(environment, name)
    # Each exposed service gets <step>.<deployment>.<environment>.<base domain>: keep it a host name.
    longest = max((len(step["id"]) for step in service_steps(version) if step.get("exposed_ports")),
                  default=None)
    if longest is not None:
        room = HOST_NAME_MAX - longest - len(environment.name) - len(environment.base_domain) - 3
        if len(name) > room:
            raise ValidationFailed(
                f"name is too long for its service URLs in {environment.name}: use at most {room} "
                f"characters", {"name": f"at most {room} characters here"})
    return name


def resolve_tags(version, tags):
    """{step id: tag} of every service step: pinned ones from the pipeline version, selectable
    ones from `tags` (checked against the step's pattern; the registry is asked later)."""
    steps = {step["id"]: step for step in service_steps(version)}
    selectable = sorted(_selectable_ids(version))
    if not isinstance(tags, dict):
        raise ValidationFailed("tags is invalid: give an object {step id: tag}", {"tags": "an object"})
    for step_id in sorted(tags, key=str):
        field, tag, step = f"tags.{step_id}", tags[step_id], steps.get(step_id)
        if step is None:
            raise ValidationFailed(
                f"{field}: pipeline version {version.number} has no service step {step_id!r}; "
                f"steps with a tag to choose: {', '.join(selectable) or 'none'}",
                {field: "unknown step; remove it"})
        if step.get("tag_mode") != "selectable":
            raise ValidationFailed(f"{step_id} is pinned to {step['tag']}; leave it out",
                                   {field: f"pinned to {step['tag']}; leave it out"})
        if not isinstance(tag, str) or not re.fullmatch(TAG_PATTERN, tag):
            raise ValidationFailed(f"{field} is invalid: use {TAG_HINT}", {field: f"use {TAG_HINT}"})
        pattern = step.get("tag_pattern")
        if pattern and not fnmatch.fnmatchcase(tag, pattern):
            raise ValidationFailed(f"tag {tag} of {step_id} does not match its pattern {pattern}; "
                                   "choose one of the step's tags", {field: f"must match {pattern}"})
    chosen = {}
    for step_id, step in steps.items():
        if step.get("tag_mode") != "selectable":
            chosen[step_id] = step["tag"]
        elif step_id in tags:
            chosen[step_id] = tags[step_id]
        else:
            which = f"matching {step['tag_pattern']}" if step.get("tag_pattern") else "from its registry"
            raise ValidationFailed(f"{step_id} needs a tag: choose one {which}",
                                   {f"tags.{step_id}": "required: choose a tag"})
    return chosen


def _registry_of(step):
    registry = db.session.get(Registry, step["registry_id"])
    if registry is None:
        raise ValidationFailed(f"the registry of {step['id']} no longer exists; ask an admin to fix "
                               "the pipeline", {f"tags.{step['id']}": "registry gone"})
    return registry


def _check_tags_exist(version, chosen):
    """Every selectable tag must exist in its registry (registry failures raise as they are)."""
    for step in service_steps(version):
        if step.get("tag_mode") != "selectable":
            continue
        registry, tag = _registry_of(step), chosen[step["id"]]
        if tag not in registries.list_tags(registry, step["image"], step.get("tag_pattern")):
            raise ValidationFailed(f"tag {tag} of {step['id']} does not exist in {step['image']} on "
                                   f"registry {registry.name}; choose one of the step's tags",
                                   {f"tags.{step['id']}": f"{tag} does not exist"})


# --- create and clone ---------------------------------------------------------------------------
def _check_secrets(project, version):
    """The secrets the pipeline version uses must still exist: saving checked them, but one may
    have been deleted since, and the agent would refuse the spec after admission."""
    wanted = secret_names(version.resolved)
    if not wanted:
        return
    missing = sorted(wanted - set(db.session.scalars(select(ProjectSecret.name).where(
        ProjectSecret.project_id == project.id, ProjectSecret.name.in_(wanted)))))
    if missing:
        listed = ", ".join(missing)
        raise Conflict(f"pipeline version {version.number} of {project.name} uses the secret"
                       f"{'s' if len(missing) > 1 else ''} {listed}, which the project no longer has: "
                       "add it under the project's secrets, or save the pipeline without it",
                       {"secrets": f"missing: {listed}"})


def _create(actor, project, environment, name, tags, source=None):
    """Validate, admit, add the row, its event and audit entry; the caller commits."""
    _require_deploy(actor, project, environment)
    version = _require_version(project)
    _check_secrets(project, version)
    name = _check_name(environment, name, version)
    if source is not None and isinstance(tags, dict | None):
        # The source's tags for the steps still selectable, then the caller's changes.
        kept = _selectable_ids(version)
        tags = {**{k: v for k, v in (source.tags or {}).items() if k in kept}, **(tags or {})}
    chosen = resolve_tags(version, tags if tags is not None else {})
    _check_tags_exist(version, chosen)
    admission.serialize(environment)  # held until the commit that adds the row
    node = admission.place(environment, project.cpus, project.memory_mb)
    now = utcnow()
    deployment = Deployment(
        name=name, project=project, environment=environment, node_id=node.id, pipeline_version=version,
        tags=chosen, cpus=project.cpus, memory_mb=project.memory_mb, status="pending",
        status_message=f"placed on {node.name}; waiting for the controller", status_changed_at=now,
        progress={}, published={}, created_by_id=getattr(actor, "id", None),
        cloned_from_id=source.id if source is not None else None, created_at=now,
        last_activity_at=now)
    db.session.add(deployment)
    try:
        db.session.flush()
    except IntegrityError:  # a concurrent create took the name (the partial unique index)
        db.session.rollback()
        raise _name_taken(environment, name) from None
    origin = f" as a clone of {source.name}" if source is not None else ""
    record_event(deployment, "created", actor,
                 f"created by {_who(actor)}{origin} on {node.name} from pipeline version {version.number}",
                 {"node": node.name, "pipeline_version": version.number, "tags": chosen})
    audit.record(actor, "deployment.create", "deployment", deployment, {
        "project": project.name, "environment": environment.name, "node": node.name,
        "pipeline_version": version.number, "tags": chosen,
        **({"cloned_from": source.id} if source is not None else {})})
    return deployment


def create(actor, project, environment, name, tags):
    deployment = _create(actor, project, environment, name, tags)
    db.session.commit()
    return deployment


def clone(actor, deployment, name, tags=None):
    """A new deployment of the same project and environment from the latest pipeline version,
    with the source's tags unless `tags` changes them."""
    clone_ = _create(actor, deployment.project, deployment.environment, name, tags, source=deployment)
    record_event(deployment, "cloned", actor, f"cloned as {clone_.name} by {_who(actor)}",
                 {"clone_id": clone_.id})
    db.session.commit()
    return clone_


# --- retry, extend, delete ----------------------------------------------------------------------
def retry(actor, deployment):
    """Deploy a failed deployment again on its node with the latest pipeline version: pinned
    tags from that version, the chosen ones kept. Admission is not redone."""
    _lock(deployment)
    if deployment.status != "failed":
        raise Conflict(f"only a failed deployment can be retried; {deployment.name} is "
                       f"{deployment.status}", {"status": deployment.status})
    node = deployment.node
    if node is None:
        raise Conflict(f"the node of {deployment.name} no longer exists; clone it to deploy it on "
                       "another node", {"node": "removed"})
    if not node.enabled:  # being emptied: a retry would be a new deployment there
        raise Conflict(f"the node of {deployment.name}, {node.name}, is disabled and takes no new "
                       "deployments; clone it to deploy it on another node", {"node": "disabled"})
    version = _require_version(deployment.project)
    _check_secrets(deployment.project, version)
    before, after = _selectable_ids(deployment.pipeline_version), _selectable_ids(version)
    if before != after:
        changes = [f"{label}: {', '.join(sorted(ids))}" for label, ids in
                   (("new steps with a tag to choose", after - before),
                    ("steps no longer with a tag to choose", before - after)) if ids]
        raise ValidationFailed(f"the pipeline changed since {deployment.name} was created "
                               f"({'; '.join(changes)}); clone it with tags instead of retrying",
                               {"tags": "the pipeline's selectable steps changed"})
    tags = {step["id"]: deployment.tags[step["id"]] if step["id"] in after else step["tag"]
            for step in service_steps(version)}
    message = f"retry requested by {_who(actor)}"
    if node.status != "online":
        message += f"; its node {node.name} is {node.status}: the retry stays on it and waits for it"
    _move(deployment, "pending", message)
    deployment.pipeline_version = version
    deployment.tags = tags
    forget_spec(deployment)  # compiled anew from this version when the controller sends it
    deployment.run_id = None
    deployment.progress = {}
    deployment.published = {}
    deployment.last_activity_at = utcnow()
    record_event(deployment, "retried", actor, message, {"pipeline_version": version.number, "tags": tags})
    audit.record(actor, "deployment.retry", "deployment", deployment,
                 {"pipeline_version": version.number, "node": node.name})
    db.session.commit()
    return deployment


def extend(actor, deployment):
    """Reset the auto-cleanup timer completely (the spec: no limit on extensions)."""
    _lock(deployment)
    if deployment.status not in ACTIVE_STATUSES:
        raise Conflict(f"{deployment.name} is {deployment.status}: only a deployment that is not "
                       "being deleted can be extended", {"status": deployment.status})
    deployment.last_activity_at = utcnow()
    minutes = cleanup_minutes(deployment)
    record_event(deployment, "extended", actor,
                 f"auto-cleanup timer reset by {_who(actor)}: {minutes} minutes from now")
    audit.record(actor, "deployment.extend", "deployment", deployment, {"cleanup_minutes": minutes})
    db.session.commit()
    return deployment


def _delete(actor, deployment, reason):
    """The locked deployment to deleting (or straight to deleted when its node row is gone)."""
    before = deployment.status
    message = reason or f"deletion requested by {_who(actor)}"
    node = deployment.node
    if node is not None and node.status != "online":
        message += (f"; its node {node.name} is {node.status}: it is removed and checked when the "
                    "node links again")
    _move(deployment, "deleting", message)
    now = utcnow()
    deployment.delete_requested_at = now
    deployment.cleanup_attempts = 0
    deployment.next_attempt_at = None
    record_event(deployment, "delete_requested", actor, message, {"status": before})
    if deployment.node_id is None:  # nothing to remove, nothing to check
        gone = "its node no longer exists: nothing to remove"
        _move(deployment, "deleted", gone)
        record_event(deployment, "deleted", None, gone)
    audit.record(actor, "deployment.delete", "deployment", deployment,
                 {"status": before, **({"reason": reason} if reason else {})})


def forget_on_removed_node(actor, node):
    """A node removed for good (its host is gone): its live deployments are recorded as deleted
    without a check, each with its event and audit entry saying so. The caller commits."""
    message = (f"its node {node.name} was removed from NullOps by {_who(actor)}: nothing on the "
               "host could be removed or checked")
    for deployment in db.session.scalars(select(Deployment).where(
            Deployment.node_id == node.id, Deployment.deleted_at.is_(None)).with_for_update()):
        before = deployment.status
        if before not in REMOVING_STATUSES:
            _move(deployment, "deleting", message)
            deployment.delete_requested_at = utcnow()
        _move(deployment, "deleted", message)
        record_event(deployment, "deleted", actor, message, {"status": before})
        audit.record(actor, "deployment.delete", "deployment", deployment,
                     {"status": before, "reason": "node removed"})


def request_delete(actor, deployment, reason=""):
    """Delete, or cancel while it is being created (the spec: cancel = delete). Idempotent:
    a deployment already being removed is left as it is."""
    _lock(deployment)
    if deployment.status in REMOVING_STATUSES:
        db.session.commit()  # releases the row lock
        return deployment
    _delete(actor, deployment, reason)
    db.session.commit()
    return deployment


# --- auto-cleanup -------------------------------------------------------------------------------
def cleanup_minutes(deployment):
    """Inactivity before auto-cleanup: the project's override, else the environment's default."""
    override = deployment.project.cleanup_minutes
    return override if override is not None else deployment.environment.cleanup_minutes


def expires_at(deployment):
    return expiry(deployment.status, deployment.last_activity_at, cleanup_minutes(deployment))


def expiry(status, last_activity_at, minutes):
    """When a deployment in `status` is auto-cleaned; None once it is being deleted."""
    if status in REMOVING_STATUSES:
        return None
    return last_activity_at + timedelta(minutes=minutes)


def remaining_seconds(deployment, now=None):
    """Seconds until auto-cleanup (for the UI's countdown); None once it is being deleted."""
    return seconds_until(expires_at(deployment), now)


def seconds_until(expires, now=None):
    if expires is None:
        return None
    return max(0, int((expires - (now or utcnow())).total_seconds()))


def _due(now):
    """select() of the ids of active deployments past their cleanup period; the periods are few
    (one per environment and per overriding project), so one condition each."""
    overrides, defaults = defaultdict(list), defaultdict(list)
    for project_id, minutes in db.session.execute(
            select(Project.id, Project.cleanup_minutes).where(Project.cleanup_minutes.is_not(None))):
        overrides[minutes].append(project_id)
    for environment_id, minutes in db.session.execute(select(Environment.id, Environment.cleanup_minutes)):
        defaults[minutes].append(environment_id)

    def idle(minutes):
        return Deployment.last_activity_at <= now - timedelta(minutes=minutes)

    conditions = [and_(Deployment.project_id.in_(ids), idle(m)) for m, ids in overrides.items()]
    overridden = [project_id for ids in overrides.values() for project_id in ids]
    for minutes, ids in defaults.items():
        condition = and_(Deployment.environment_id.in_(ids), idle(minutes))
        conditions.append(and_(Deployment.project_id.not_in(overridden), condition) if overridden
                          else condition)
    if not conditions:
        return None
    return (select(Deployment.id).where(Deployment.status.in_(ACTIVE_STATUSES), or_(*conditions))
            .order_by(Deployment.last_activity_at, Deployment.id))


def expire_due(now=None):
    """Request the deletion of every deployment inactive for its cleanup period; returns them.
    The controller runs this as a scheduled job."""
    now = now or utcnow()
    stmt = _due(now)
    if stmt is None:
        return []
    expired = []
    for deployment_id in db.session.scalars(stmt).all():
        deployment = db.session.get(Deployment, deployment_id)
        if deployment is None:
            continue
        _lock(deployment)  # a user may have extended or deleted it since the query
        if deployment.status not in ACTIVE_STATUSES or expires_at(deployment) > now:
            db.session.commit()
            continue
        _delete(None, deployment, f"auto-cleanup: inactive for {cleanup_minutes(deployment)} minutes")
        db.session.commit()
        expired.append(deployment)
    return expired


# --- what a deploy form needs -------------------------------------------------------------------
def deploy_options(project):
    """The latest pipeline version's number and its service steps with their tag modes."""
    version = latest_version(project)
    if version is None:
        return {"pipeline_version": None, "steps": []}
    steps = []
    for step in service_steps(version):
        selectable = step.get("tag_mode") == "selectable"
        steps.append({"step_id": step["id"], "service": step.get("service") or step["id"],
                      "tag_mode": "selectable" if selectable else "pinned",
                      "tag": None if selectable else step.get("tag"),
                      "tag_pattern": step.get("tag_pattern") if selectable else None})
    return {"pipeline_version": version.number, "steps": steps}


def step_tags(project, step_id):
    """The tags a selectable step of the latest pipeline version offers (its pattern applied)."""
    version = _require_version(project)
    step = next((s for s in service_steps(version) if s["id"] == step_id), None)
    if step is None:
        raise NotFound(f"pipeline version {version.number} of {project.name} has no service step "
                       f"{step_id!r}")
    if step.get("tag_mode") != "selectable":
        raise ValidationFailed(f"{step_id} is pinned to {step.get('tag')}: there is no tag to choose",
                               {"step_id": f"pinned to {step.get('tag')}"})
    pattern = step.get("tag_pattern")
    return {"step_id": step_id, "pattern": pattern,
            "tags": registries.list_tags(_registry_of(step), step["image"], pattern)}


# --- live data (through the controller) ---------------------------------------------------------
def _live_node(deployment):
    if deployment.status == "deleted":
        raise Conflict(f"{deployment.name} is deleted: its containers, logs and metrics are gone",
                       {"status": "deleted"})
    node = deployment.node
    if node is None:
        raise live.LiveDataUnavailable(f"the node of {deployment.name} no longer exists")
    if node.status in NO_LINK_NODE_STATUSES:
        raise live.LiveDataUnavailable(f"node {node.name} is {node.status}: live data comes back "
                                       "when it reconnects")
    return node


def logs(deployment, step_id, tail=200):
    """The last `tail` log lines of one step of the deployment, from its agent."""
    steps = [step["id"] for step in deployment.pipeline_version.resolved.get("steps", [])]
    if step_id not in steps:
        raise ValidationFailed(f"step is invalid: {deployment.name} has no step {step_id!r}; its "
                               f"steps: {', '.join(steps)}", {"step": "unknown step"})
    if not isinstance(tail, int) or not 1 <= tail <= TAIL_MAX:
        raise ValidationFailed(f"tail is invalid: give 1-{TAIL_MAX} lines", {"tail": f"1-{TAIL_MAX}"})
    node = _live_node(deployment)
    result = live.node_call(node.id, protocol.LOGS_TAIL, {
        "deployment_id": deployment.agent_id, "step_id": step_id, "tail": tail}, timeout=LIVE_TIMEOUT_S)
    return list(result.get("lines") or [])


def metrics(deployment):
    """Samples of the deployment's containers from its node's stats (label org.nullops.deployment)."""
    node = _live_node(deployment)
    stats = live.node_call(node.id, protocol.STATS_GET, timeout=LIVE_TIMEOUT_S)
    return [c for c in stats.get("containers") or [] if c.get("deployment_id") == deployment.agent_id]
