"""What the controller reads and writes about nodes. Plain synchronous functions: the link
manager runs them in worker threads, each inside an app context, one transaction each."""
import logging

from sqlalchemy import bindparam, or_, select, text, update

from app.controller import deployments
from app.controller.leader import HOLDS_LOCK
from app.extensions import db
from app.models import ControllerEndpoint, Node, NodeCommand, NodeOutbox
from app.models import nodes as node_model
from app.models.types import utcnow
from app.services import audit, nodes
from app.services.catalog import keyring
from app.states import TransitionError, move_node

log = logging.getLogger("nullops.controller")


def link_targets():
    """{node id: target} of every node that should have a link, verifier decrypted."""
    # Columns, not ORM objects: this runs every poll, and loading 1,000 Node objects cost
    # ~60 ms of CPU each time.
    linked = db.session.execute(
        select(Node.id, Node.name, Node.host, Node.port, Node.thumbprint, Node.verifier_ciphertext)
        # Untrusted nodes wait for an admin's approval, disabled and revoked ones for an admin:
        # no connection attempts at all. A disabled node that still holds deployments keeps its
        # link status (app/services/nodes.py) and its link: it drains.
        .where(Node.verifier_ciphertext.is_not(None), Node.status.in_(nodes.LINKED_STATUSES),
               or_(Node.enabled.is_(True), nodes.HOLDS_DEPLOYMENTS))
    ).all()
    targets = {}
    for node in linked:
        targets[node.id] = {
            "id": node.id, "name": node.name, "host": node.host, "port": node.port,
            "thumbprint": node.thumbprint,
            "verifier": nodes.reveal_verifier(node), "previous_verifier": None,
        }
    # A rotation not pushed yet: the agent may still hold the verifier before it (the handshake
    # tries it second, then the rotation goes out over that link).
    waiting = db.session.execute(select(NodeCommand.node_id, NodeCommand.payload_ciphertext).where(
        NodeCommand.kind == nodes.ROTATE_TOKEN, NodeCommand.done_at.is_(None)).order_by(NodeCommand.id))
    for node_id, payload in waiting:
        if node_id in targets and payload:
            targets[node_id]["previous_verifier"] = nodes.read_rotation(
                keyring().decrypt(payload, nodes.PAYLOAD_CONTEXT))[1]
    return targets


def _node(node_id):
    return db.session.get(Node, node_id)


def _move(node, status, reason):
    try:
        return move_node(node, status, reason)
    except TransitionError as exc:  # an admin changed the node meanwhile: their word wins
        log.info("not moving node %s: %s", node.name, exc)
        return False


def mark(node_id, status, reason, fence=None):
    """A link's end: the node offline (its deployments too), incompatible... Only while the lock
    is still this controller's (`fence`, LeaderLock.fence): a thawed old leader's links end
    with 'no heartbeat' or 'replaced' and would take a node offline under the new leader."""
    if fence is not None and not db.session.execute(text(HOLDS_LOCK), {"fence": fence}).scalar():
        log.info("not marking node %s %s: this controller no longer holds the lock", node_id, status)
        db.session.rollback()
        return
    with deployments.writing:
        node = _node(node_id)
        if node is None:
            return
        if _move(node, status, reason) and status in ("offline", "incompatible"):
            audit.record(None, f"node.{status}", "node", node, {"reason": reason})
        if node.status in ("offline", "incompatible"):  # no link: its deployments are unreachable
            deployments.node_offline(node_id, reason)
        db.session.commit()


def mark_online(node_id, thumbprint, hello):
    """A good handshake: pin the thumbprint at first contact, record what the agent said."""
    mark_online_many([(node_id, thumbprint, hello)])


def mark_online_many(items):
    """mark_online for many nodes, [(node id, thumbprint, hello)], in one transaction: the link
    manager gathers the links that came up meanwhile (a whole fleet links at once when a
    controller starts)."""
    ids = [node_id for node_id, _thumbprint, _hello in items]
    found = {node.id: node for node in db.session.scalars(select(Node).where(Node.id.in_(ids)))}
    # Read at once, and no flush until the commit: one outbox read per node, each flushing the
    # node before it, took about 4 ms a node, so 4,000 nodes linking at once waited minutes
    # for their batches (benchmarks/agent_fleet.py, issue 19).
    outboxes = {row.node_id: row for row in db.session.scalars(
        select(NodeOutbox).where(NodeOutbox.node_id.in_(ids)))}
    with db.session.no_autoflush:
        for node_id, thumbprint, hello in items:
            node = found.get(node_id)
            if node is not None:
                _online(node, thumbprint, hello, outboxes)
    db.session.commit()


def _online(node, thumbprint, hello, outboxes):
    first = node.thumbprint is None
    if first:
        node.thumbprint = thumbprint
        audit.record(None, "node.thumbprint_pinned", "node", node, {"thumbprint": thumbprint})
    capacity = hello.get("capacity") or {}
    node.agent_node_id = str(hello.get("node_id", ""))[:64]
    node.agent_version = str(hello.get("agent_version", ""))[:32]
    outbox = str(hello.get("outbox", ""))[:64]
    known = outboxes.get(node.id)
    if known is None:
        outboxes[node.id] = NodeOutbox(node_id=node.id, outbox=outbox, last_seq=0)
        db.session.add(outboxes[node.id])
    elif known.outbox != outbox:  # a new data directory: its seqs start again at 1
        known.outbox, known.last_seq = outbox, 0
    if isinstance(capacity.get("cpus"), int | float):
        node.reported_cpus = float(capacity["cpus"])
    if isinstance(capacity.get("memory_bytes"), int):
        node.reported_memory_mb = capacity["memory_bytes"] // (1024 * 1024)
    node.last_seen_at = utcnow()
    if _move(node, "online", "linked"):
        audit.record(None, "node.online", "node", node)


def mark_untrusted(node_id, seen):
    """A different certificate than the pinned one: nothing more goes to this node until an
    admin compares the thumbprint with the agent's log and approves it."""
    node = _node(node_id)
    if node is None:
        return
    node.pending_thumbprint = seen
    reason = ("the agent's certificate changed: compare the new thumbprint with the agent's log "
              "line and approve it")
    if _move(node, "untrusted", reason):
        audit.record(None, "node.untrusted", "node", node,
                     {"pinned": node.thumbprint, "presented": seen})
    db.session.commit()


def mark_incompatible(node_id, reason, agent_version):
    node = _node(node_id)
    if node is None:
        return
    node.agent_version = str(agent_version)[:32]
    mark(node_id, "incompatible", reason)


def touch(node_id):
    node = _node(node_id)
    if node is not None:
        node.last_seen_at = utcnow()
        db.session.commit()


def store_resources(batch):
    """The latest resources frame of many nodes, {node id: (frame, received at)}, in one
    statement: the link manager gathers them (a fleet sends one per node every 15 s, and all at
    once when it links). Only usable figures are written (node_model.usable_figures): one that
    a column cannot hold would fail every node's write. Returns {node id: [unusable figures]}
    of the frames that held any."""
    if not batch:
        return {}
    table = Node.__table__
    rows, unusable = [], {}
    for node_id, (frame, at) in batch.items():
        figures, refused = node_model.usable_figures(frame)
        if refused:
            unusable[node_id] = refused
        free_cpus, free_memory_mb = node_model.reported_free(figures)
        rows.append({"node_id": node_id, "at": at, "figures": figures, "free_cpus": free_cpus,
                     "free_memory_mb": free_memory_mb,
                     "cpu_percent": node_model.sustained_cpu_percent(figures)})
    db.session.execute(
        update(table).where(table.c.id == bindparam("node_id")).values(
            resources=bindparam("figures"), resources_at=bindparam("at"), last_seen_at=bindparam("at"),
            reported_free_cpus=bindparam("free_cpus"),
            reported_free_memory_mb=bindparam("free_memory_mb"),
            reported_cpu_percent=bindparam("cpu_percent")),
        rows)
    db.session.commit()
    return unusable


def publish_endpoint(address, thumbprint):
    """Where the internal endpoint of this, the active, controller is: web processes read it
    for every live-data connection (a failover moves it) and pin the thumbprint."""
    row = db.session.get(ControllerEndpoint, ControllerEndpoint.ACTIVE)
    if row is None:
        row = ControllerEndpoint(id=ControllerEndpoint.ACTIVE)
        db.session.add(row)
    row.address, row.thumbprint, row.since = address, thumbprint, utcnow()
    db.session.commit()


def open_commands():
    rows = db.session.scalars(select(NodeCommand).where(NodeCommand.done_at.is_(None))
                              .order_by(NodeCommand.id)).all()
    result = []
    for row in rows:
        payload = None
        if row.payload_ciphertext:
            payload = keyring().decrypt(row.payload_ciphertext, "node_command.payload")
        result.append({"id": row.id, "node_id": row.node_id, "kind": row.kind, "payload": payload})
    return result


def finish_command(command_id, result):
    finish_commands([(command_id, result)])


def finish_commands(items):
    """finish_command for many, [(command id, result)], in one transaction."""
    rows = {row.id: row for row in db.session.scalars(
        select(NodeCommand).where(NodeCommand.id.in_([command_id for command_id, _result in items])))}
    for command_id, result in items:
        row = rows.get(command_id)
        if row is not None:
            row.done_at = utcnow()
            row.result = result[:500]
            row.payload_ciphertext = None  # done: the new verifier need not wait in this table
    db.session.commit()
