"""Wake-ups (issue 19): a write the controller acts on wakes it at once instead of at its next poll.

- PostgreSQL: a transaction that writes a deployment, a node, a node command or an environment
  sends `NOTIFY nullops_wake` inside that same transaction (PostgreSQL delivers it at the
  commit, and never for a rollback); the active controller LISTENs on a connection of its own
  (WakeListener) and wakes its link manager and the ingress.
- SQLite (`nullops dev`: web and controller in one process): the commit calls the wakers the
  controller registered in this process.

The poll stays as the safety net: a notification lost with a dropped listening connection is
made up for by one wake-up on reconnect and, at worst, by the next poll. The controller's own
writes do not wake it (`quiet()`): it wakes itself where it must, and at 1,000 nodes every event
batch starting a round would cost a round per batch.
"""
import asyncio
import contextlib
import contextvars
import logging

import psycopg2
from psycopg2 import extensions
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger("nullops.wakeup")

CHANNEL = "nullops_wake"
# What the controller's rounds and the ingress read: pending and deleting deployments, link
# targets, node commands, route-table inputs (an environment's base domain).
WAKING_TABLES = frozenset({"deployments", "nodes", "node_commands", "environments"})
PENDING = "nullops_wake"  # Session.info key: the dialect name, once this transaction woke
RETRY_FIRST_S, RETRY_CAP_S = 0.5, 5.0
APPLICATION_NAME = "nullops-controller-wake"

_quiet = contextvars.ContextVar("nullops_wake_quiet", default=False)
_local_wakers = []   # callables, for SQLite (one process)


@contextlib.contextmanager
def quiet():
    """Writes made inside wake nobody (the controller's own; worker threads started with
    asyncio.to_thread inherit it)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def add_local_waker(callback):
    _local_wakers.append(callback)


def remove_local_waker(callback):
    with contextlib.suppress(ValueError):
        _local_wakers.remove(callback)


def _mark(session):
    """This transaction wakes the controller: on PostgreSQL the NOTIFY goes out in it now."""
    if _quiet.get() or PENDING in session.info:
        return
    connection = session.connection()
    session.info[PENDING] = connection.dialect.name
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"NOTIFY {CHANNEL}")


def _table_of(obj):
    return getattr(obj, "__tablename__", None)


def _after_flush(session, _context):
    if _quiet.get() or PENDING in session.info:
        return
    for collection in (session.new, session.dirty, session.deleted):
        if any(_table_of(obj) in WAKING_TABLES for obj in collection):
            _mark(session)
            return


def _bulk_statement(state):
    """INSERT/UPDATE/DELETE statements run through the session (no flush sees them)."""
    if _quiet.get() or not (state.is_insert or state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) in WAKING_TABLES:
        _mark(state.session)


def _after_commit(session):
    dialect = session.info.pop(PENDING, None)
    if dialect is not None and dialect != "postgresql":
        for waker in list(_local_wakers):
            waker()


def _after_rollback(session):
    session.info.pop(PENDING, None)


HOOKS = (("after_flush", _after_flush), ("do_orm_execute", _bulk_statement),
         ("after_commit", _after_commit), ("after_rollback", _after_rollback))


def install():
    """The session hooks, on every SQLAlchemy session of this process (once)."""
    for name, hook in HOOKS:
        if not event.contains(Session, name, hook):
            event.listen(Session, name, hook)


class WakeListener:
    """LISTENs on a dedicated connection and calls `on_wake` for every notification burst, and
    once after every (re)connect, since notifications sent while it was away are lost."""

    def __init__(self, database_url, on_wake):
        url = make_url(database_url)
        _args, params = url.get_dialect()().create_connect_args(url)
        from app.controller.leader import CLIENT_TCP, CONNECT_TIMEOUT_S

        # Keepalives: a connection cut silently errors within seconds instead of listening to
        # nothing for hours (the poll covers the gap meanwhile).
        self._params = {**params, **CLIENT_TCP, "connect_timeout": int(CONNECT_TIMEOUT_S),
                        "application_name": APPLICATION_NAME}
        self.on_wake = on_wake
        self.connects = 0        # for tests and the log: how often it (re)connected
        self.notifications = 0   # bursts received

    def _connect(self):
        connection = psycopg2.connect(**self._params)
        try:
            connection.set_isolation_level(extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            connection.close()
            raise
        return connection

    async def run(self, stopping):
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST_S
        while not stopping.is_set():
            try:
                connection = await asyncio.to_thread(self._connect)
            except psycopg2.Error as exc:
                log.warning("cannot listen for wake-ups (the poll still runs): %s; retrying in "
                            "%.1f s", str(exc).strip(), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(RETRY_CAP_S, delay * 2)
                continue
            delay = RETRY_FIRST_S
            self.connects += 1
            if self.connects > 1:
                log.info("listening for wake-ups again")
            lost = asyncio.Event()
            fd = connection.fileno()
            loop.add_reader(fd, self._readable, connection, lost)
            self.on_wake()  # whatever was written while nobody listened
            try:
                waiters = {asyncio.create_task(lost.wait()), asyncio.create_task(stopping.wait())}
                _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for task in waiters:
                    task.cancel()
            finally:
                loop.remove_reader(fd)
                connection.close()
            if lost.is_set() and not stopping.is_set():
                log.warning("the wake-up connection dropped; reconnecting (the poll still runs)")

    def _readable(self, connection, lost):
        # Hot path: one call per notification burst, in the event loop.
        try:
            connection.poll()
        except psycopg2.Error:
            lost.set()
            return
        if connection.closed:
            lost.set()
            return
        if connection.notifies:
            connection.notifies.clear()
            self.notifications += 1
            self.on_wake()
