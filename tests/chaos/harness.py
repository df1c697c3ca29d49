"""What the chaos scenarios share: their counts (fast in `make test`, full in `make chaos`), a
seeded random source, convergence waits, leak checks by label and by database rows, link drops,
and the JSON results file `make chaos` renders into docs/reliability.md
(scripts/chaos_report.py).

NULLOPS_CHAOS_FULL=1 switches every scenario to its full counts; NULLOPS_CHAOS_SEED replays a
run (each scenario prints the seed it used); NULLOPS_CHAOS_RESULTS names the JSON file the
figures are written to (none by default: `make test` only prints them).
"""
import contextlib
import fcntl
import json
import os
import platform
import random
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, Deployment, Node

FULL = os.environ.get("NULLOPS_CHAOS_FULL", "") not in ("", "0")
RESULTS = os.environ.get("NULLOPS_CHAOS_RESULTS")
NODE_LABEL, DEPLOYMENT_LABEL = "org.nullops.node", "org.nullops.deployment"
# Statuses after which nothing more happens by itself, and the ones whose objects may exist.
SETTLED = ("ready", "failed", "deleted", "degraded", "cleanup_failed")
HOLDS_OBJECTS = ("ready", "degraded")


def count(fast, full):
    """How many times, or how long: `full` under `make chaos`, `fast` in `make test`."""
    return full if FULL else fast


def variant():
    return "full" if FULL else "fast"


def seeded(name):
    """A random source of the scenario's own; its seed is printed (pytest shows it on failure,
    -s shows it always) so that a failing run can be replayed with NULLOPS_CHAOS_SEED."""
    seed = int(os.environ.get("NULLOPS_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"[chaos] {name}: seed {seed} (replay with NULLOPS_CHAOS_SEED={seed})")
    return random.Random(seed), seed


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class Scenario:
    """One scenario's figures: iterations, how many converged, what leaked, how long each took to
    converge, link drops (expected ones, the faults themselves, apart from the others), and any
    further measures (lists of seconds by name). `save()` writes them to the results file."""

    def __init__(self, name, title, seed):
        self.name, self.title, self.seed = name, title, seed
        self.iterations = self.converged = 0
        self.converge_s = []
        self.leaked = []
        self.link_drops = self.expected_link_drops = 0
        self.measures = {}
        self.counts = {}
        self.notes = []
        self.started = time.monotonic()

    def iteration(self, converged, seconds=None):
        self.iterations += 1
        self.converged += bool(converged)
        if seconds is not None:
            self.converge_s.append(round(seconds, 3))

    def measure(self, name, seconds):
        self.measures.setdefault(name, []).append(round(seconds, 3))

    def tally(self, name, amount=1):
        self.counts[name] = self.counts.get(name, 0) + amount

    def note(self, text):
        self.notes.append(text)
        print(f"[chaos] {self.name}: {text}")

    def summary(self):
        figures = {
            "title": self.title, "variant": variant(), "seed": self.seed,
            "iterations": self.iterations, "converged": self.converged,
            "leaked": len(self.leaked), "leaked_objects": self.leaked[:50],
            "converge_s": summarize(self.converge_s),
            "link_drops": self.link_drops, "expected_link_drops": self.expected_link_drops,
            "measures": {name: summarize(values) for name, values in self.measures.items()},
            "counts": self.counts, "notes": self.notes,
            "wall_s": round(time.monotonic() - self.started, 1),
            "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return figures

    def save(self):
        figures = self.summary()
        print(f"[chaos] {self.name}: {json.dumps(figures)}")
        if RESULTS:
            write_results(Path(RESULTS), self.name, figures)
        return figures


def summarize(values):
    return {"n": len(values), "p50": percentile(values, 0.5), "max": max(values) if values else None,
            "values": values[:200]}


def machine():
    load = os.getloadavg()
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_at_end": [round(x, 2) for x in load]}


def write_results(path, name, figures):
    """Merge one scenario's figures into the results file (a lock: pytest-xdist or two runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            results = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            results = {"scenarios": {}}
        results["scenarios"][name] = figures
        results["machine"] = machine()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=2, sort_keys=True))
        temporary.replace(path)


# --- the database ----------------------------------------------------------------------------
def statuses(ids):
    db.session.expire_all()
    if not ids:
        return {}
    rows = db.session.execute(select(Deployment.id, Deployment.status).where(Deployment.id.in_(ids)))
    return dict(rows.all())


def settle(wanted, timeout, poll=0.1):
    """Wait until every deployment is in one of the statuses wanted for it ({id: tuple}); returns
    ({id: status}, seconds). Raises AssertionError naming the ones that did not get there."""
    started = time.monotonic()
    while True:
        now = statuses(list(wanted))
        if all(now.get(i) in want for i, want in wanted.items()):
            return now, time.monotonic() - started
        if time.monotonic() - started > timeout:
            stuck = {i: (now.get(i), message(i)) for i, want in wanted.items() if now.get(i) not in want}
            raise AssertionError(f"not converged after {timeout:.0f} s: {stuck}")
        time.sleep(poll)


def message(deployment_id):
    row = db.session.get(Deployment, deployment_id)
    return row.status_message if row is not None else None


def history(deployment_id):
    """The deployment's history as the controller stored it, one line per event (for failures)."""
    from app.models import DeploymentEvent

    db.session.expire_all()
    return [f"{e.kind}: {e.message}" for e in db.session.scalars(
        select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment_id)
        .order_by(DeploymentEvent.id))]


def live_rows(node_id):
    """Deployment rows on the node that are not deleted (each holds resources in admission)."""
    db.session.expire_all()
    return db.session.scalar(select(func.count(Deployment.id)).where(
        Deployment.node_id == node_id, Deployment.deleted_at.is_(None)))


def link_drops(node_id, since_id=0):
    """How often the node went offline (the controller writes an audit entry each time its
    status moves to offline): the link drops the controller noticed."""
    db.session.expire_all()
    return db.session.scalar(select(func.count(AuditEntry.id)).where(
        AuditEntry.action == "node.offline", AuditEntry.target_id == node_id, AuditEntry.id > since_id))


def last_audit_id():
    db.session.expire_all()
    return db.session.scalar(select(func.coalesce(func.max(AuditEntry.id), 0)))


def node_status(node_id):
    db.session.expire_all()
    return db.session.get(Node, node_id).status


def wait_node(node_id, want, timeout, poll=0.05):
    """Seconds until the node's status is `want`."""
    started = time.monotonic()
    while node_status(node_id) != want:
        assert time.monotonic() - started < timeout, \
            f"node still {node_status(node_id)} after {timeout:.0f} s, wanted {want}"
        time.sleep(poll)
    return time.monotonic() - started


# --- the Docker engine -----------------------------------------------------------------------
def labelled(docker_client, node_id):
    """{deployment label: ["container <name> (<state>)", "network <name>", ...]} of everything on
    the engine that carries the node's label (what its agent created)."""
    selector = {"label": f"{NODE_LABEL}={node_id}"}
    found = {}
    for container in docker_client.containers.list(all=True, filters=selector, ignore_removed=True):
        found.setdefault(container.labels.get(DEPLOYMENT_LABEL), []).append(
            f"container {container.name} ({container.status})")
    for network in docker_client.networks.list(filters=selector):
        found.setdefault((network.attrs.get("Labels") or {}).get(DEPLOYMENT_LABEL), []).append(
            f"network {network.name}")
    for volume in docker_client.volumes.list(filters=selector):
        found.setdefault((volume.attrs.get("Labels") or {}).get(DEPLOYMENT_LABEL), []).append(
            f"volume {volume.name}")
    return found


def leaks(docker_client, node_id):
    """Objects labelled with the node that the database does not account for: their deployment
    is unknown, or in a status that holds nothing on the node (failed: rolled back; deleted)."""
    found = labelled(docker_client, node_id)
    ids = {label: int(label[4:]) for label in found
           if label and label.startswith("dep-") and label[4:].isdigit()}
    known = statuses(list(ids.values()))
    leaked = []
    for label, objects in found.items():
        status = known.get(ids.get(label))
        if status not in HOLDS_OBJECTS:
            leaked += [f"{obj} of {label} ({status or 'unknown to the database'})" for obj in objects]
    return leaked


def missing_services(docker_client, node_id, deployment_ids):
    """Ready deployments whose service containers are not all running (state the database claims
    and the engine does not show)."""
    missing = []
    for deployment_id in deployment_ids:
        row = db.session.get(Deployment, deployment_id)
        services = [s["id"] for s in row.pipeline_version.resolved["steps"] if s["kind"] == "service"]
        running = {c.labels.get("org.nullops.step") for c in docker_client.containers.list(
            filters={"label": [f"{NODE_LABEL}={node_id}", f"{DEPLOYMENT_LABEL}=dep-{deployment_id}"]},
            ignore_removed=True)}
        missing += [f"dep-{deployment_id}/{s}" for s in services if s not in running]
    return missing


def wait_clean(docker_client, node_id, timeout, poll=0.2):
    """Leaks may be in the middle of removal when a run's last event arrives: (leaks, seconds)
    once there are none, or what is left after `timeout`."""
    started = time.monotonic()
    while True:
        leaked = leaks(docker_client, node_id)
        if not leaked or time.monotonic() - started > timeout:
            return leaked, time.monotonic() - started
        time.sleep(poll)


def agent_store(data_dir):
    """The agent's own record, read from its SQLite file: {deployment id: status}."""
    import sqlite3

    path = Path(data_dir) / "agent.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return dict(conn.execute("SELECT deployment_id, status FROM deployments").fetchall())
