"""Admission: which node of an environment takes a new deployment (the spec's deployment
creation flow; docs/deployments.md "Admission").

A node is a candidate when it is online and enabled (a disabled node gets no new deployments).
A deployment fits a node when (issue 18 item 2):
- memory, which cannot be taken back from a process, is reserved strictly: the limits of the
  node's live deployments plus the new one stay within its memory less its reserve, and the
  new one's limit within what the agent reports as available over the last minute;
- CPU is compressible (a busy deployment is slowed down to its limit, never killed): the
  limits may add up to the node's CPUs times the CPU overcommit ratio (the node's, else the
  environment's), and real CPU use turns deployments away only while the node is saturated,
  busy SATURATED_PERCENT or more over the last minute.
Agent figures count only while they are fresh; a stale report is ignored (the allocation
checks still apply). Placement spreads: of the nodes that fit, the one with the most memory
left to allocate wins (then CPUs left, then the lowest id), so deployments share nodes evenly
and one node's loss takes as few as possible.

Placements in one environment are serialized (serialize(), issue 18 item 3): the check and the
insert of one create happen while no other create of the environment runs between them.

Hot path: every create and clone runs this (measured with 500 nodes and 10,000 deployments in
benchmarks/api_latency.py), so the database does it: one query computes each candidate's room
(the allocation a GROUP BY over an index) and returns the node that fits best. Only a refusal
reads every candidate's room, to say what was short; users see free figures only then (the
spec).
"""
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import case, func, literal, select

from app import access
from app.extensions import db
from app.models import Deployment, Environment, Node
from app.models.types import utcnow
from app.services.errors import InsufficientResources

FRESH_FOR = timedelta(seconds=60)   # agents send resources frames every few seconds
SHOWN_NODES = 5                     # nodes a refusal names; the rest are counted
SATURATED_PERCENT = 90.0            # a node this busy over a minute takes no new deployment
EPSILON = 1e-6                      # sums of float CPUs: 0.1 + 0.2 must fit under 0.3


def _cpus(value):
    value = round(value, 2)
    return f"{value:g} CPU" if value == 1 else f"{value:g} CPUs"


class Candidate(NamedTuple):
    """A node that may take deployments and its room: what a new deployment may take on it
    (None for both while its capacity is unknown); `saturated` holds the minute's CPU percent
    when that turns deployments away, `real_memory_mb` the available memory when it is what
    limits the room."""

    id: int
    name: str
    free_cpus: float | None
    free_memory_mb: int | None
    saturated: float | None = None
    real_memory_mb: int | None = None


def _floor0(value):
    return case((value < 0, literal(0)), else_=value)


def _room(environment, now):
    """Subquery of the environment's candidates (online, enabled) with their room: CPUs times
    the ratio and memory less the reserve, minus what live deployments hold; memory capped by
    the agent's report while it is fresh."""
    held = (select(Deployment.node_id, func.sum(Deployment.cpus).label("cpus"),
                   func.sum(Deployment.memory_mb).label("memory_mb"))
            # Live: every status but deleted, which is what deleted_at says (a constraint holds
            # the two together), and what the index the sums are read from holds.
            .where(Deployment.environment_id == environment.id, Deployment.node_id.is_not(None),
                   Deployment.deleted_at.is_(None))
            .group_by(Deployment.node_id).subquery())
    fresh = Node.resources_at >= now - FRESH_FOR
    ratio = func.coalesce(Node.cpu_overcommit, select(Environment.cpu_overcommit)
                          .where(Environment.id == environment.id).scalar_subquery())
    allocatable_memory = Node.capacity_memory_mb - Node.memory_reserve_mb - func.coalesce(held.c.memory_mb, 0)
    real_memory = case((fresh, Node.reported_free_memory_mb))
    return (select(Node.id, Node.name,
                   _floor0(Node.capacity_cpus * ratio - func.coalesce(held.c.cpus, 0)).label("free_cpus"),
                   _floor0(case((real_memory.is_(None), allocatable_memory),
                                (real_memory < allocatable_memory, real_memory),
                                else_=allocatable_memory)).label("free_memory_mb"),
                   case((fresh & (Node.reported_cpu_percent >= SATURATED_PERCENT),
                         Node.reported_cpu_percent)).label("saturated"),
                   case((real_memory < allocatable_memory, real_memory)).label("real_memory_mb"))
            .outerjoin(held, held.c.node_id == Node.id)
            .where(Node.environment_id == environment.id, Node.status == "online",
                   Node.enabled.is_(True))
            .subquery())


# The two-key form of PostgreSQL's advisory locks (pg_locks shows objsubid 2, apart from the
# controller's one-key leader lock): this namespace, then the environment's id.
PLACEMENT_LOCK = 0x706C6163  # "plac"


def serialize(environment):
    """Wait for the environment's other placements to commit, and keep them waiting until this
    transaction ends (issue 18 item 3): place() then sees every deployment they added, so
    concurrent creates cannot over-commit a node. Call it before place(), in the transaction
    that inserts the deployment. SQLite has one writer at a time already."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(PLACEMENT_LOCK, environment.id)))


def place(environment, cpus, memory_mb, now=None):
    """The node (a Candidate) that takes a deployment needing `cpus` and `memory_mb`: of those
    it fits, the one with the most memory left (spread); or InsufficientResources saying what was
    short on each node, in plain words."""
    room = _room(environment, now or utcnow())
    best = db.session.execute(
        select(room).where(room.c.saturated.is_(None), room.c.free_cpus + EPSILON >= cpus,
                           room.c.free_memory_mb >= memory_mb)
        .order_by(room.c.free_memory_mb.desc(), room.c.free_cpus.desc(), room.c.id).limit(1)
    ).first()
    if best is not None:
        return _candidate(best)
    candidates = [_candidate(row) for row in db.session.execute(select(room))]
    if not candidates:
        raise InsufficientResources(_no_online_node(environment),
                                    {"environment_id": "no online node"})
    raise InsufficientResources(_short(environment, cpus, memory_mb, candidates),
                                {"environment_id": "not enough free resources"})


def _candidate(row):
    saturated = None if row.saturated is None else float(row.saturated)
    if row.free_cpus is None or row.free_memory_mb is None:
        return Candidate(row.id, row.name, None, None, saturated)
    real = None if row.real_memory_mb is None else int(row.real_memory_mb)
    return Candidate(row.id, row.name, float(row.free_cpus), int(row.free_memory_mb), saturated, real)


def _why(candidate):
    """What one node has, in words a user reads in a refusal."""
    if candidate.free_cpus is None:
        return f"{candidate.name} has not reported its capacity yet"
    if candidate.saturated is not None:
        return (f"{candidate.name} is saturated: its CPUs were {candidate.saturated:.0f}% busy "
                "over the last minute")
    said = f"{candidate.name} has {_cpus(candidate.free_cpus)} and {candidate.free_memory_mb} MB free"
    if candidate.real_memory_mb is not None:
        said += " (its host has no more memory available)"
    return said


def _short(environment, cpus, memory_mb, candidates):
    # Most room first; saturated nodes and those that have not reported their capacity last.
    ordered = sorted(candidates, key=lambda c: (c.free_cpus is None, c.saturated is not None,
                                                -(c.free_memory_mb or 0), -(c.free_cpus or 0), c.name))
    parts = [_why(c) for c in ordered]
    shown = "; ".join(parts[:SHOWN_NODES])
    if len(parts) > SHOWN_NODES:
        shown += f"; and {len(parts) - SHOWN_NODES} more online nodes with less"
    return (f"no online node in {environment.name} has {_cpus(cpus)} and {memory_mb} MB free: "
            f"{shown}")


def _no_online_node(environment):
    rows = db.session.execute(select(Node.name, Node.status, Node.enabled)
                              .where(Node.environment_id == environment.id)
                              .order_by(Node.name)).all()
    if not rows:
        return (f"no online node in {environment.name}: the environment has no nodes; "
                "ask an admin to add one")
    states = [f"{name} is {status if enabled else 'disabled'}" for name, status, enabled in rows]
    listed = ", ".join(states[:SHOWN_NODES])
    if len(states) > SHOWN_NODES:
        listed += f" and {len(states) - SHOWN_NODES} more"
    return f"no online node in {environment.name} takes new deployments ({listed}); try again later"


def allocation(node, viewer, now=None):
    """What a node holds against what it may hold, as its page and GET /nodes/{id}/allocation
    show it (issue 18 item 4): CPUs with the ratio, memory with the reserve, the agent's real
    figures over the last minute (None when stale or missing), and what each live deployment
    reserves. Deployments the viewer may not see are summed, not named."""
    now = now or utcnow()
    ratio = node.cpu_overcommit if node.cpu_overcommit is not None else node.environment.cpu_overcommit
    rows = db.session.execute(
        select(Deployment.id, Deployment.name, Deployment.status, Deployment.cpus, Deployment.memory_mb)
        .where(Deployment.node_id == node.id, Deployment.deleted_at.is_(None))
        .order_by(Deployment.memory_mb.desc(), Deployment.name)).all()
    visible = set(db.session.scalars(
        access.visible(viewer, Deployment).with_only_columns(Deployment.id)
        .where(Deployment.node_id == node.id, Deployment.deleted_at.is_(None))))
    fresh = node.resources_at is not None and node.resources_at >= now - FRESH_FOR
    capacity_cpus, capacity_memory = node.capacity_cpus, node.capacity_memory_mb
    hidden = [row for row in rows if row.id not in visible]
    return {
        "cpus": {"capacity": capacity_cpus, "overcommit": ratio,
                 "allocatable": None if capacity_cpus is None else round(capacity_cpus * ratio, 3),
                 "allocated": round(sum(row.cpus for row in rows), 3)},
        "memory_mb": {"capacity": capacity_memory, "reserve": node.memory_reserve_mb,
                      "allocatable": None if capacity_memory is None
                      else max(0, capacity_memory - node.memory_reserve_mb),
                      "allocated": sum(row.memory_mb for row in rows)},
        "real": {"cpu_percent_1m": node.reported_cpu_percent if fresh else None,
                 "memory_available_mb": node.reported_free_memory_mb if fresh else None,
                 "saturated": bool(fresh and node.reported_cpu_percent is not None
                                   and node.reported_cpu_percent >= SATURATED_PERCENT),
                 "at": node.resources_at},
        "deployments": [{"id": row.id, "name": row.name, "status": row.status, "cpus": row.cpus,
                         "memory_mb": row.memory_mb} for row in rows if row.id in visible],
        "others": {"count": len(hidden), "cpus": round(sum(row.cpus for row in hidden), 3),
                   "memory_mb": sum(row.memory_mb for row in hidden)},
    }
