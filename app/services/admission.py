"""Admission: which node of an environment takes a new deployment (the spec's deployment
creation flow; ARCHITECTURE.md "Resource admission").

A node is a candidate when it is online and enabled (a disabled node gets no new deployments).
A deployment fits when the project's CPUs and memory fit both under the node's capacity minus
what its live deployments hold, and under what the agent last reported as actually free; the
report counts only while it is fresh, a stale one is ignored (the allocation check still
applies). Of the nodes that fit, the one with the most free memory wins.

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

from app.extensions import db
from app.models import Deployment, Node
from app.models.types import utcnow
from app.services.errors import InsufficientResources

FRESH_FOR = timedelta(seconds=60)   # agents send resources frames every few seconds
SHOWN_NODES = 5                     # nodes a refusal names; the rest are counted
EPSILON = 1e-6                      # sums of float CPUs: 0.1 + 0.2 must fit under 0.3


def _cpus(value):
    value = round(value, 2)
    return f"{value:g} CPU" if value == 1 else f"{value:g} CPUs"


class Candidate(NamedTuple):
    """A node that may take deployments and its room: what a new deployment may take on it
    (None for both while its capacity is unknown)."""

    id: int
    name: str
    free_cpus: float | None
    free_memory_mb: int | None


def _lower(allocatable, reported):
    """The lower of the two, where a missing report (None) does not count; never below zero."""
    lower = case((reported.is_(None), allocatable), (reported < allocatable, reported),
                 else_=allocatable)
    return case((lower < 0, literal(0)), else_=lower)


def _room(environment, now):
    """Subquery of the environment's candidates (online, enabled) with their room: the capacity
    minus what live deployments hold, capped by the agent's report while it is fresh."""
    held = (select(Deployment.node_id, func.sum(Deployment.cpus).label("cpus"),
                   func.sum(Deployment.memory_mb).label("memory_mb"))
            # Live: every status but deleted, which is what deleted_at says (a constraint holds
            # the two together), and what the index the sums are read from holds.
            .where(Deployment.environment_id == environment.id, Deployment.node_id.is_not(None),
                   Deployment.deleted_at.is_(None))
            .group_by(Deployment.node_id).subquery())
    fresh = Node.resources_at >= now - FRESH_FOR
    return (select(Node.id, Node.name,
                   _lower(Node.capacity_cpus - func.coalesce(held.c.cpus, 0),
                          case((fresh, Node.reported_free_cpus))).label("free_cpus"),
                   _lower(Node.capacity_memory_mb - func.coalesce(held.c.memory_mb, 0),
                          case((fresh, Node.reported_free_memory_mb))).label("free_memory_mb"))
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
    it fits, the one with the most free memory; or InsufficientResources saying what was short."""
    room = _room(environment, now or utcnow())
    best = db.session.execute(
        select(room).where(room.c.free_cpus + EPSILON >= cpus, room.c.free_memory_mb >= memory_mb)
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
    if row.free_cpus is None or row.free_memory_mb is None:
        return Candidate(row.id, row.name, None, None)
    return Candidate(row.id, row.name, float(row.free_cpus), int(row.free_memory_mb))


def _short(environment, cpus, memory_mb, candidates):
    known = sorted((c for c in candidates if c.free_cpus is not None),
                   key=lambda c: (-c.free_memory_mb, -c.free_cpus, c.name))
    unknown = sorted(c.name for c in candidates if c.free_cpus is None)
    parts = [f"{c.name} has {_cpus(c.free_cpus)} and {c.free_memory_mb} MB free" for c in known]
    parts += [f"{name} has not reported its capacity yet" for name in unknown]
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
