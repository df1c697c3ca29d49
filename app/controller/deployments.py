"""What the controller reads and writes about deployments. Plain synchronous functions, as in
app/controller/state.py: the link manager runs them in worker threads, each inside an app
context, one transaction each; the `*_many` style ones take a list so that what arrives from
a whole fleet meanwhile is written together (manager.Batched).

Every status change goes through app.states.move_deployment. A TransitionError means someone
else (a user, another event) changed the deployment meanwhile: their word wins, we skip.
Level-triggered: nothing here depends on memory; killed and restarted, the controller reads
the same rows and does the same again.
"""
import functools
import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import defer

from agent import protocol
from app.extensions import db
from app.models import Deployment, DeploymentEvent, NodeOutbox
from app.models.types import utcnow
from app.services import nodes
from app.services.specs import Preloaded, apply_params, delete_params
from app.states import TransitionError, move_deployment

log = logging.getLogger("nullops.controller.deployments")

# What a node's agent should run: state.sync sends these; the ones left out are removed by the
# agent, except those it keeps for the round to delete with what their rollback plugins need
# (a failed one too: a user deletes or retries it, and a run a restart cut short owes rollbacks).
DESIRED = ("pending", "deploying", "ready", "degraded", "offline")
KEPT_FOR_THE_ROUND = ("failed", "deleting", "cleanup_failed")
GOES_OFFLINE = ("deploying", "ready", "degraded")  # with the node's link (pending stays pending)
# What a state.sync answer may move, and from which statuses. The answer says what the agent did
# when the sync arrived; the events that follow it on the link (a run's "ready", a reconcile's
# "degraded") are newer, but another writer stores them and may be first. So the answer only
# moves what no event of this link has spoken for yet: a run going on ("applied") makes pending
# or offline ones deploying, not a deployment its run's "ready" already reached (seen in the
# chaos suite: a controller killed during a create left it deploying for good); the agent's
# ready copy ("kept") makes pending, offline or deploying ones ready, not degraded ones.
SYNC_MOVES = {"deploying": ("pending", "offline"), "ready": ("pending", "offline", "deploying"),
              "degraded": ("pending", "offline", "deploying"), "failed": DESIRED}
ATTEMPTS = 3                                       # deletes per cleanup before cleanup_failed
BACKOFF_FIRST = timedelta(minutes=1)
BACKOFF_CAP = timedelta(minutes=30)
RUN_ENDED = ("succeeded", "failed", "cancelled", "interrupted")
# Outcomes of a delete answer, for the manager.
DELETED, WAITING, FAILED = "deleted", "waiting", "failed"

# The controller's writers (the round, event batches, sync answers) run in worker threads at
# once, and each reads a status and moves it on: two moving the same row from the same status
# would both record the change. So they take turns; FOR UPDATE does the same against other
# processes on PostgreSQL (SQLite ignores it, and `nullops dev` is one process).
writing = threading.RLock()


def serialized(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        with writing:
            return fn(*args)

    return wrapper


def id_of(agent_id):
    """Deployment id from the agent's id (`Deployment.agent_id`: "dep-<id>"), or None."""
    if not isinstance(agent_id, str) or not agent_id.startswith("dep-") or not agent_id[4:].isdigit():
        return None
    return int(agent_id[4:])


def record(deployment, kind, message="", data=None):
    """One line of the deployment's history, by the controller (no actor). The caller commits."""
    # Imported here: app.services.deployments reaches app.controller through app.services.live.
    from app.services.deployments import record_event

    record_event(deployment, kind, message=message, data=data)


def move(deployment, status, message=""):
    """Change the status and record it; False when unchanged or not allowed any more."""
    before = deployment.status
    try:
        changed = move_deployment(deployment, status, message)
    except TransitionError as exc:
        log.info("not moving deployment %s: %s", deployment.id, exc)
        return False
    if changed:
        record(deployment, "status", message or f"{before} -> {status}", {"from": before, "to": status})
    return changed


def _rows(ids, where=None):
    if not ids:
        return {}
    query = select(Deployment).where(Deployment.id.in_(ids))
    if where is not None:
        query = query.where(where)
    return {d.id: d for d in db.session.scalars(query.order_by(Deployment.id).with_for_update())}


def _node_name(deployment):
    return deployment.node.name if deployment.node is not None else "(deleted node)"


def _labels(deployment):
    return f"containers, networks or volumes labelled org.nullops.deployment={deployment.agent_id}"


# --- the desired state and its answer ---------------------------------------------------------
def desired_state(node_id):
    return desired_states([(node_id,)])[0]


@serialized
def desired_states(items):
    """{"deployments": [state.sync entries], "keep": [agent ids]} for each of [(node id,)],
    secrets decrypted now (never log them). `keep` adds the ones the round deletes itself: the
    sync must not remove them without what their rollback plugins need."""
    node_ids = [node_id for (node_id,) in items]
    # Not their progress and published ports (JSON each): a restart syncs every live deployment.
    rows = db.session.scalars(select(Deployment).where(
        Deployment.node_id.in_(node_ids), Deployment.status.in_(DESIRED + KEPT_FOR_THE_ROUND))
        .options(defer(Deployment.progress), defer(Deployment.published))
        .order_by(Deployment.id)).all()
    by_node = {node_id: {"deployments": [], "keep": []} for node_id in node_ids}
    preloaded = Preloaded([deployment for deployment in rows if deployment.status not in KEPT_FOR_THE_ROUND])
    for deployment in rows:
        desired = by_node[deployment.node_id]
        if deployment.status in KEPT_FOR_THE_ROUND:
            desired["keep"].append(deployment.agent_id)
        elif (params := _params(deployment, preloaded)) is not None:  # else failed: the agent removes it
            desired["deployments"].append(params)
            desired["keep"].append(deployment.agent_id)
    db.session.commit()  # the failed ones, and specs kept for the first time
    return [by_node[node_id] for node_id in node_ids]


def _params(deployment, preloaded=None):
    """apply_params, or None when they cannot be built (the deployment fails; the caller
    commits): one broken row must not stop a node's sync or the round."""
    try:
        return apply_params(deployment, preloaded)
    except Exception as exc:  # noqa: BLE001
        log.exception("deployment %s: building its spec failed", deployment.id)
        move(deployment, "failed", f"the control plane could not build its spec "
                                   f"({type(exc).__name__}); see the controller log")
        return None


def _delete_params(deployment):
    """delete_params, or the bare id when they cannot be built (its rollbacks get less, but the
    delete goes on)."""
    try:
        return delete_params(deployment)
    except Exception:  # noqa: BLE001
        log.exception("deployment %s: building its delete params failed", deployment.id)
        return {"deployment_id": deployment.agent_id}


def record_sync(node_id, result):
    record_syncs([(node_id, result)])


@serialized
def record_syncs(items):
    """The answers to state.sync, [(node id, {applied, kept, degraded, deleted, errors})]:
    applied ones are deploying, kept ones ready (or degraded, as the agent says), refused ones
    failed, each only from the statuses SYNC_MOVES allows. Deleted ones are not written here:
    the round checks the deleting ones with a delete of its own."""
    wanted = {}
    for node_id, result in items:
        degraded = set(result.get("degraded") or [])
        for agent_id in result.get("applied") or []:
            wanted[id_of(agent_id)] = (node_id, "deploying", "")
        for agent_id in result.get("kept") or []:
            wanted[id_of(agent_id)] = (node_id, "degraded" if agent_id in degraded else "ready", "")
        for agent_id, message in (result.get("errors") or {}).items():
            wanted[id_of(agent_id)] = (node_id, "failed", f"the agent refused it: {message}")
    # Only rows an answer may move are read (and locked): after a controller restart a fleet's
    # answers name every live deployment, nearly all ready already (10,000 rows read for none).
    refused = [i for i, (_node, status, _message) in wanted.items() if status == "failed" and i is not None]
    movable = {source for status, sources in SYNC_MOVES.items() if status != "failed" for source in sources}
    rows = _rows([i for i in wanted if i is not None],
                 or_(Deployment.status.in_(movable), Deployment.id.in_(refused)))
    for deployment_id, deployment in rows.items():
        node_id, status, message = wanted[deployment_id]
        # Read before the sync went out: a deployment deleted meanwhile is the round's now.
        if deployment.node_id == node_id and deployment.status in SYNC_MOVES[status]:
            move(deployment, status, message)
    db.session.commit()


# --- the round --------------------------------------------------------------------------------
@serialized
def due_work(online_node_ids, busy_ids, now):
    """One read per manager round: ([(id, node id, apply params)] to apply, [(id, node id,
    delete params)] to delete), for deployments on online nodes with no call in progress (busy_ids).
    In the same transaction: cleanups whose retry is due go back to deleting, and deleting
    ones whose node row is gone are deleted (there is nothing left to ask)."""
    rows = db.session.scalars(select(Deployment).where(
        Deployment.status.in_(("pending", "deleting", "cleanup_failed")))
        .order_by(Deployment.id).with_for_update()).all()
    to_apply, to_delete = [], []
    for deployment in rows:
        if deployment.status == "cleanup_failed":
            if deployment.next_attempt_at is None or deployment.next_attempt_at > now:
                continue
            if not move(deployment, "deleting", "retrying the cleanup"):
                continue
            deployment.cleanup_attempts = 0
            deployment.next_attempt_at = None
        if deployment.status == "deleting" and deployment.node_id is None:
            _deleted(deployment, "its node was removed from NullOps: nothing could be checked "
                                 "or removed there")
        elif deployment.id in busy_ids or deployment.node_id not in online_node_ids:
            continue
        elif deployment.status == "deleting":
            to_delete.append((deployment.id, deployment.node_id, _delete_params(deployment)))
        elif (params := _params(deployment)) is not None:
            to_apply.append((deployment.id, deployment.node_id, params))
    db.session.commit()
    return to_apply, to_delete


def _adopt_run(deployment, run_id):
    """A new run of the deployment: its steps start over."""
    if run_id and run_id != deployment.run_id:
        deployment.run_id = run_id
        deployment.progress = {}


def record_apply(deployment_id, result, error):
    return record_applies([(deployment_id, result, error)])[0]


@serialized
def record_applies(items):
    """Answers to deployment.apply, [(id, result or None, error message or None)]."""
    rows = _rows([deployment_id for deployment_id, _result, _error in items])
    for deployment_id, result, error in items:
        deployment = rows.get(deployment_id)
        # Only a pending one: events of the run may have moved it on before this answer is written.
        if deployment is None or deployment.status != "pending":
            continue
        if error is not None:
            move(deployment, "failed", f"the agent refused it: {error}")
        elif result.get("run_id") is None and result.get("status") == "ready":
            move(deployment, "ready")
        else:
            _adopt_run(deployment, result.get("run_id"))
            move(deployment, "deploying")
    db.session.commit()
    return [None] * len(items)


def record_delete(deployment_id, answer):
    return record_deletes([(deployment_id, answer)])[0]


@serialized
def record_deletes(items):
    """Answers to deployment.delete, [(id, answer)] -> [DELETED, WAITING, FAILED or None].
    {"run_id": null, "status": "deleted"} means the agent found nothing with the deployment's
    labels (containers, networks, volumes): checked, deleted. A run means something was there:
    one more attempt, up to ATTEMPTS; the next answer after that still finding something is a
    cleanup failure."""
    rows = _rows([deployment_id for deployment_id, _answer in items])
    now = utcnow()
    outcomes = []
    for deployment_id, answer in items:
        deployment = rows.get(deployment_id)
        if deployment is None or deployment.status != "deleting":
            outcomes.append(None)
        elif answer.get("run_id") is None and answer.get("status") == "deleted":
            _deleted(deployment, f"removed; nothing labelled {deployment.agent_id} is left on "
                                 f"node {_node_name(deployment)}")
            outcomes.append(DELETED)
        elif answer.get("run_id") == deployment.run_id:
            outcomes.append(WAITING)  # the delete run counted already is still going
        elif deployment.cleanup_attempts >= ATTEMPTS:
            _cleanup_failed(deployment, now, f"after {deployment.cleanup_attempts} deletes, node "
                                             f"{_node_name(deployment)} still has {_labels(deployment)}")
            outcomes.append(FAILED)
        else:
            deployment.cleanup_attempts += 1
            deployment.run_id = answer.get("run_id")
            outcomes.append(WAITING)
    db.session.commit()
    return outcomes


def fail_cleanup(deployment_id, reason):
    fail_cleanups([(deployment_id, reason)])


@serialized
def fail_cleanups(items):
    """[(id, why)]: the delete could not be run or its run failed."""
    rows = _rows([deployment_id for deployment_id, _reason in items])
    now = utcnow()
    for deployment_id, reason in items:
        deployment = rows.get(deployment_id)
        if deployment is not None and deployment.status == "deleting":
            _cleanup_failed(deployment, now, f"{reason}; {_labels(deployment)} may be left on node "
                                             f"{_node_name(deployment)}")
    db.session.commit()


def _deleted(deployment, message):
    if move(deployment, "deleted", message):
        deployment.run_id = None
        deployment.next_attempt_at = None
        if deployment.node_id is not None:
            nodes.settle_drained(deployment.node_id)  # a disabled node's last one: unlinked now


def _cleanup_failed(deployment, now, reason):
    """Shown as such and retried: 1 minute after the first failure, doubling, at most 30."""
    earlier = sum(1 for data in db.session.scalars(select(DeploymentEvent.data).where(
        DeploymentEvent.deployment_id == deployment.id, DeploymentEvent.kind == "status"))
        if isinstance(data, dict) and data.get("to") == "cleanup_failed")
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(earlier, 10))
    retry_at = now + delay
    if move(deployment, "cleanup_failed", f"{reason}; retrying at {retry_at:%Y-%m-%d %H:%M} UTC"):
        deployment.next_attempt_at = retry_at


# --- nodes ------------------------------------------------------------------------------------
def node_offline(node_id, reason):
    """The node's link is gone: what ran there is unreachable (not migrated, the spec). Called
    inside state.mark's transaction (holding `writing`); the next sync says what the agent
    still has."""
    for deployment in db.session.scalars(select(Deployment).where(
            Deployment.node_id == node_id, Deployment.status.in_(GOES_OFFLINE)).with_for_update()):
        move(deployment, "offline", f"node offline: {reason}")


# --- events from agents -----------------------------------------------------------------------
def apply_event(node_id, event, data, seq=None):
    apply_events([(node_id, event, data, seq)])


@serialized
def apply_events(items):
    """Events of agents in the order they came, [(node id, event name, data, seq)]: run
    progress and deployment statuses. Deleted deployments and unknown ids are ignored, as are
    events a node sends about a deployment placed elsewhere, and replays: an event whose seq is
    not above the last one stored from its node's outbox was stored already (the link dropped
    before the agent got the ack), and storing it again would write its history twice."""
    items = _not_replayed(items)
    rows = _rows({i for _node_id, _event, data in items if (i := id_of(data.get("deployment_id")))})
    for node_id, event, data in items:
        deployment = rows.get(id_of(data.get("deployment_id")))
        if deployment is None or deployment.node_id != node_id or deployment.status == "deleted":
            continue
        if event == protocol.RUN_PROGRESS:
            _on_progress(deployment, data)
        elif event == protocol.DEPLOYMENT_STATUS:
            _on_status(deployment, data)
    db.session.commit()


def _not_replayed(items):
    """[(node id, event, data)] of the items not stored before; moves each node's last seq on."""
    table = NodeOutbox.__table__
    last = dict(db.session.execute(select(table.c.node_id, table.c.last_seq).where(
        table.c.node_id.in_({node_id for node_id, *_rest in items}))).all())
    before, fresh = dict(last), []
    for node_id, event, data, seq in items:
        if isinstance(seq, int) and node_id in last:
            if seq <= last[node_id]:
                continue
            last[node_id] = seq
        fresh.append((node_id, event, data))
    for node_id, seq in last.items():
        if seq != before[node_id]:
            db.session.execute(update(table).where(table.c.node_id == node_id).values(last_seq=seq))
    return fresh


def _text(value, limit=1000):
    return str(value)[:limit] if value else ""


def _on_progress(deployment, data):
    run_id, status = data.get("run_id"), data.get("status")
    step_id, step_status = data.get("step_id"), data.get("step_status")
    message = _text(data.get("message"), 800)
    if run_id != deployment.run_id and status == "running" and deployment.status in DESIRED:
        _adopt_run(deployment, run_id)  # a run the controller did not start (a sync, a reconcile)
    if step_id is not None:
        if run_id == deployment.run_id:
            deployment.progress = {**(deployment.progress or {}), str(step_id)[:64]: step_status}
        line = f"{step_id} {step_status}" + (f": {message}" if message else "")
    else:
        line = f"run {status}" + (f": {message}" if message else "")
    # The message rides along in the data too: the deployment page shows a failing step's last
    # one (a readiness probe's, say) as that service's health (app/services/deployments.py health).
    record(deployment, "step", line, {"run_id": run_id, "status": status, "step_id": step_id,
                                      "step_status": step_status, "message": message or None})
    if (deployment.status == "deleting" and run_id == deployment.run_id
            and status in ("failed", "cancelled")):
        why = f"the agent's delete run {status} ({message or 'no reason given'})"
        _cleanup_failed(deployment, utcnow(), f"{why}; {_labels(deployment)} may be left on node "
                                              f"{_node_name(deployment)}")


def _on_status(deployment, data):
    status = data.get("status")
    if deployment.status in ("deleting", "cleanup_failed"):
        return  # being removed: the round checks the agent by label, whatever it says here
    if status == "ready":
        healed = data.get("healed")
        healed = [str(s)[:64] for s in healed] if isinstance(healed, list) else []
        message = f"restarted {', '.join(healed)}" if healed else ""
        if move(deployment, "ready", message) or deployment.status == "ready":
            if isinstance(data.get("services"), dict):
                deployment.published = data["services"]
        if healed and deployment.status == "ready":
            # Its own line even when the status stays ready (move records only changes): the
            # deployment page counts each service's restarts from these.
            record(deployment, "restart", message, {"steps": healed})
    elif status in ("failed", "degraded", "deploying"):
        move(deployment, status, _text(data.get("message")))
    # "deleting" and "deleted" change nothing here: deletions are checked by the round.

