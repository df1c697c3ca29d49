"""The agent's own record, in SQLite (`agent.db` in the data directory): what it was asked to
run, how its runs went, their logs, and the outbox of events the control plane has not yet
acknowledged. It survives restarts; the control plane stays the source of truth and re-syncs.

One connection shared by all threads behind a lock: the agent's write rate is small (steps,
log batches, events), and one connection keeps transactions simple. WAL with
synchronous=NORMAL survives a killed process; a power loss may drop the last commits, which
the control plane's `state.sync` and event replay make good.

Never stored here: secret values and tokens. Specs hold `${secrets.NAME}` references only,
step logs pass through `redact` before they are written, and step outputs are stored sealed
with a key this disk never holds (agent/sealed.py).
"""
import datetime
import json
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from agent import protocol
from agent.redaction import redact

DB_FILE = "agent.db"
SCHEMA_VERSION = 2
ACTIVE_STEP_STATES = frozenset({"pending", "running", "rolling_back"})
MAX_LINE_CHARS = 8192            # one log line; longer lines are cut
MAX_LINES_PER_STEP = 20000       # older lines of a step are dropped
MAX_OUTBOX = 100000              # oldest unacknowledged events are dropped (the seq gap shows it)
KEEP_FINISHED_RUNS = 500         # older finished runs, their steps and logs are dropped

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE deployments (
    deployment_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('apply', 'delete')),
    status TEXT NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_deployment ON runs (deployment_id);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    started_at TEXT,
    finished_at TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE step_logs (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, seq)
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    at TEXT NOT NULL
);
"""
# Schema changes after version 1, by the version they bring a store to.
_UPGRADES = {
    2: """
CREATE TABLE outputs (
    deployment_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    sealed TEXT NOT NULL,
    PRIMARY KEY (deployment_id, step_id)
);
""",
}


def utc_now():
    """ISO 8601 UTC with milliseconds and a Z, as every time on the wire is written."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._listeners = []
        # check_same_thread=False: the connection is shared, and self._lock serialises it.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    @classmethod
    def open(cls, data_dir):
        return cls(Path(data_dir) / DB_FILE)

    def close(self):
        with self._lock:
            self._db.close()

    def _migrate(self):
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer agent (schema {version})")
            scripts = [_SCHEMA] if version == 0 else []
            scripts += [_UPGRADES[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]
            for script in scripts:
                # Statement by statement: executescript() would COMMIT the transaction first.
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    # --- meta -----------------------------------------------------------------------------------
    def get_meta(self, key):
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    def set_meta(self, key, value):
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # --- rollbacks an interrupted run owes ---------------------------------------------------
    # An apply cut short by a restart may have had plugins make things outside the node; their
    # rollbacks need the secrets and outputs only the next apply or delete brings (issue #14.7).
    def owe_rollbacks(self, deployment_id, spec, step_ids):
        self.set_meta(f"rollback:{deployment_id}", json.dumps({"spec": spec, "steps": step_ids}))

    def owed_rollbacks(self, deployment_id):
        """(the interrupted run's spec, its plugin step ids to roll back, dependents first) or None."""
        raw = self.get_meta(f"rollback:{deployment_id}")
        if raw is None:
            return None
        owed = json.loads(raw)
        return owed["spec"], owed["steps"]

    def settle_rollbacks(self, deployment_id):
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (f"rollback:{deployment_id}",))

    # --- deployments ----------------------------------------------------------------------------
    def put_deployment(self, deployment_id, spec, status="pending", message=None):
        """Insert or replace a deployment's spec (references only, never secret values)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO deployments (deployment_id, spec, status, message, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (deployment_id) DO UPDATE SET spec = excluded.spec, "
                "status = excluded.status, message = excluded.message, updated_at = excluded.updated_at",
                (deployment_id, json.dumps(spec, sort_keys=True), status, message, utc_now()))

    @staticmethod
    def _deployment(row):
        return {"deployment_id": row["deployment_id"], "spec": json.loads(row["spec"]),
                "status": row["status"], "message": row["message"], "updated_at": row["updated_at"]}

    def get_deployment(self, deployment_id):
        row = self._one("SELECT * FROM deployments WHERE deployment_id = ?", (deployment_id,))
        return self._deployment(row) if row else None

    def list_deployments(self):
        return [self._deployment(r) for r in self._all("SELECT * FROM deployments ORDER BY deployment_id")]

    def delete_deployment(self, deployment_id):
        """Forget a deployment and its outputs; its runs stay readable (run.get of the delete run)."""
        with self._tx() as db:
            db.execute("DELETE FROM outputs WHERE deployment_id = ?", (deployment_id,))
            db.execute("DELETE FROM meta WHERE key = ?", (f"rollback:{deployment_id}",))
            cursor = db.execute("DELETE FROM deployments WHERE deployment_id = ?", (deployment_id,))
            return cursor.rowcount > 0

    def set_deployment_status(self, deployment_id, status, message=None):
        with self._tx() as db:
            return db.execute(
                "UPDATE deployments SET status = ?, message = ?, updated_at = ? WHERE deployment_id = ?",
                (status, message, utc_now(), deployment_id)).rowcount > 0

    # --- sealed step outputs --------------------------------------------------------------------
    def put_output(self, deployment_id, step_id, sealed):
        with self._tx() as db:
            db.execute("INSERT INTO outputs (deployment_id, step_id, sealed) VALUES (?, ?, ?) "
                       "ON CONFLICT (deployment_id, step_id) DO UPDATE SET sealed = excluded.sealed",
                       (deployment_id, step_id, sealed))

    def sealed_outputs(self, deployment_id):
        """{step id: sealed output} of a deployment."""
        return {r["step_id"]: r["sealed"] for r in self._all(
            "SELECT step_id, sealed FROM outputs WHERE deployment_id = ?", (deployment_id,))}

    def drop_outputs(self, deployment_id):
        with self._tx() as db:
            db.execute("DELETE FROM outputs WHERE deployment_id = ?", (deployment_id,))

    # --- runs and steps -------------------------------------------------------------------------
    def create_run(self, run_id, deployment_id, kind, status="running"):
        with self._tx() as db:
            db.execute("INSERT INTO runs (run_id, deployment_id, kind, status, started_at) "
                       "VALUES (?, ?, ?, ?, ?)", (run_id, deployment_id, kind, status, utc_now()))
            self._prune_runs(db)
        return run_id

    @staticmethod
    def _prune_runs(db):
        old = [r[0] for r in db.execute(
            "SELECT run_id FROM runs WHERE finished_at IS NOT NULL "
            "ORDER BY finished_at DESC LIMIT -1 OFFSET ?", (KEEP_FINISHED_RUNS,))]
        for run_id in old:
            for table in ("step_logs", "steps", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def finish_run(self, run_id, status, error=None):
        with self._tx() as db:
            return db.execute("UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
                              (status, error, utc_now(), run_id)).rowcount > 0

    @staticmethod
    def _run(row):
        return {k: row[k] for k in ("run_id", "deployment_id", "kind", "status", "error",
                                    "started_at", "finished_at")}

    def get_run(self, run_id):
        """The run with its steps in the order they were first recorded; None when unknown."""
        with self._lock:
            row = self._one("SELECT * FROM runs WHERE run_id = ?", (run_id,))
            if row is None:
                return None
            steps = self._all("SELECT step_id, status, message, started_at, finished_at FROM steps "
                              "WHERE run_id = ? ORDER BY rowid", (run_id,))
        return {**self._run(row), "steps": [dict(s) for s in steps]}

    def runs_in_state(self, status):
        return [self._run(r) for r in self._all("SELECT * FROM runs WHERE status = ? ORDER BY started_at",
                                                (status,))]

    def set_step(self, run_id, step_id, status, message=None):
        """Record a step's state: started_at is set the first time it leaves "pending",
        finished_at whenever it is in a final state."""
        now = utc_now()
        started = None if status == "pending" else now
        finished = None if status in ACTIVE_STEP_STATES else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO steps (run_id, step_id, status, message, started_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id) DO UPDATE SET "
                "status = excluded.status, message = excluded.message, "
                "started_at = COALESCE(steps.started_at, excluded.started_at), "
                "finished_at = excluded.finished_at",
                (run_id, step_id, status, message, started, finished))

    def append_step_logs(self, run_id, step_id, lines, secret_values=()):
        """Append lines (redacted with `secret_values`, each cut at MAX_LINE_CHARS); returns the
        seq of the last line."""
        clean = []
        for line in lines:
            line = redact(str(line), secret_values)
            if len(line) > MAX_LINE_CHARS:
                line = line[:MAX_LINE_CHARS] + " [cut]"
            clean.append(line)
        with self._tx() as db:
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM step_logs WHERE run_id = ? AND step_id = ?",
                              (run_id, step_id)).fetchone()[0]
            db.executemany("INSERT INTO step_logs (run_id, step_id, seq, line) VALUES (?, ?, ?, ?)",
                           [(run_id, step_id, last + i, line) for i, line in enumerate(clean, 1)])
            last += len(clean)
            if last > MAX_LINES_PER_STEP:
                db.execute("DELETE FROM step_logs WHERE run_id = ? AND step_id = ? AND seq <= ?",
                           (run_id, step_id, last - MAX_LINES_PER_STEP))
        return last

    def step_logs(self, run_id, step_id, tail=None):
        """A step's stored lines, oldest first; with `tail`, only the last `tail` of them."""
        if tail is None:
            rows = self._all("SELECT line FROM step_logs WHERE run_id = ? AND step_id = ? ORDER BY seq",
                             (run_id, step_id))
        else:
            rows = self._all("SELECT line FROM (SELECT seq, line FROM step_logs WHERE run_id = ? AND "
                             "step_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq", (run_id, step_id, tail))
        return [r["line"] for r in rows]

    # --- event outbox ---------------------------------------------------------------------------
    def add_event_listener(self, callback):
        """`callback(seq)` runs after each appended event is committed (EventHub wakes the link)."""
        self._listeners.append(callback)

    def append_event(self, event, data):
        """Put an event in the outbox; returns its seq (increasing, never reused). An event larger
        than EVENT_BUDGET_BYTES is stored cut and marked: one too large for a frame would close
        the link on every replay."""
        payload = protocol.encode(protocol.shrink(data, protocol.EVENT_BUDGET_BYTES))
        with self._tx() as db:
            seq = db.execute("INSERT INTO events (event, data, at) VALUES (?, ?, ?)",
                             (event, payload, utc_now())).lastrowid
            if seq > MAX_OUTBOX:
                db.execute("DELETE FROM events WHERE seq <= ?", (seq - MAX_OUTBOX,))
        for callback in list(self._listeners):
            callback(seq)
        return seq

    def events_after(self, seq, limit=1000):
        rows = self._all("SELECT seq, event, data, at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                         (seq, limit))
        return [{"seq": r["seq"], "event": r["event"], "at": r["at"], "data": json.loads(r["data"])}
                for r in rows]

    def ack_events(self, seq):
        """Forget every event up to and including `seq`; returns how many were dropped."""
        with self._tx() as db:
            return db.execute("DELETE FROM events WHERE seq <= ?", (seq,)).rowcount

    def outbox_id(self):
        """This outbox's identity, made once: seqs are unique within it only (a new data
        directory starts again at 1), so the control plane knows when to forget the last seq it
        stored."""
        outbox = self.get_meta("outbox_id")
        if outbox is None:
            outbox = uuid.uuid4().hex
            self.set_meta("outbox_id", outbox)
        return outbox

    def last_event_seq(self):
        """The highest seq ever given out (0 for none), also after every event was acknowledged."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return row["seq"] if row else 0


class EventHub:
    """The outbox plus a wake-up: `publish` stores an event and wakes the link's sender at once.

    The service and pipeline call `hub.publish(event, data)`. Events appended straight through
    `store.append_event` wake the sender too (the hub listens to the store)."""

    def __init__(self, store):
        self.store = store
        self._cond = threading.Condition()
        self._latest = store.last_event_seq()
        self._wakeups = 0
        store.add_event_listener(self._appended)

    def publish(self, event, data):
        return self.store.append_event(event, data)

    def _appended(self, seq):
        with self._cond:
            self._latest = max(self._latest, seq)
            self._cond.notify_all()

    def wait(self, after_seq, timeout, stop=None):
        """Block until an event newer than `after_seq` exists, `stop` (a threading.Event) is set,
        `wake()` is called or `timeout` seconds pass; True when there is something newer.
        Set `stop` before calling `wake()`: a waiter that had not started waiting yet then
        returns at once instead of missing the wake-up."""
        with self._cond:
            wakeups = self._wakeups
            self._cond.wait_for(lambda: (self._latest > after_seq or self._wakeups != wakeups
                                         or (stop is not None and stop.is_set())), timeout)
            return self._latest > after_seq

    def wake(self):
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()
