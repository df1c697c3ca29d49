"""One active controller: a PostgreSQL advisory lock elects it, a second one waits.

The lock lives as long as the session that took it: the leader keeps one dedicated connection
open and checks it every second; when a check fails or goes unanswered, leadership is gone and
the controller stops acting at once. A waiting controller retries every second.

A leader that dies cleanly ends its session at once (its kernel closes the connection). One that
is cut off (a partition, a host frozen whole) sends nothing more, so both ends bound the silence:
- the leader: every exchange on the lock connection must answer within ANSWER_TIMEOUT_S, else it
  gives the session up (a silent database is a lost lock);
- PostgreSQL: the session's own TCP keepalives and user timeout (set per session below) end it
  SESSION_ENDS_AFTER_S after the leader's last packet, which frees the lock for a standby.
The leader gives up (within ELECTION_RETRY_S + ANSWER_TIMEOUT_S, about 4 s) well before the
server frees the lock (about 10 s), so two controllers never act at once.

A leader frozen on a live host (SIGSTOP, a debugger, a paused VM) sends nothing either, but its
kernel still answers TCP for it, so its session lives on. Its checks stop, though: a healthy
leader's session goes idle anew every second, and a standby that finds the lock's session idle
for more than LEASE_S ends it (pg_terminate_backend: both connect as the same role, which may)
and takes the lock. When the frozen one runs again its next check finds the session gone and it
steps down; meanwhile the agents dropped its links for the new leader's (one link per node).
SQLite (`nullops dev`) has one process by construction: it is always the leader.
"""
import logging
import select
import time

import psycopg2
from psycopg2 import extensions
from sqlalchemy.engine import make_url

log = logging.getLogger("nullops.controller.leader")

# An arbitrary, fixed 64-bit key: "nullops controller".
LOCK_KEY = 0x6E756C6C6F7073

# Every exchange on the lock connection (the lock, a check) answers within this or counts as a
# lost lock. PostgreSQL answers them in milliseconds, a loaded 2-core host well within a second;
# the leader checks every second (app/controller/__init__.py), so it stops acting at most about
# 4 s after the database last answered it.
ANSWER_TIMEOUT_S = 3.0
# Opening the connection (TCP, TLS, authentication) gets a little longer. libpq's connect_timeout
# only bounds blocking connects; this connection is non-blocking, so the deadline is ours.
CONNECT_TIMEOUT_S = 5.0
# TCP on the lock connection, the same at both ends: the leader talks every second, so 5 s of
# silence means trouble; then a probe every second, and after 10 s without any answer the
# connection is over (the user timeout also covers data sent and never acknowledged). On the
# server this is what ends a vanished leader's session, and with it the lock: PostgreSQL's
# defaults leave it to the kernel's (2 hours of keepalive silence, about 15 minutes of
# retransmissions). A frozen process on a live host (SIGSTOP, a debugger) keeps the lock: its
# kernel still answers for it; it also acts no more until it runs again and checks.
# A lock whose session has been idle this long belongs to a leader that stopped checking (frozen):
# ten missed checks, far beyond a loaded host's delays.
LEASE_S = 10
# The advisory lock as pg_locks shows a bigint key: its high and low halves, objsubid 1, in this
# database (advisory locks are per database: another installation on the same server, or
# another test run, has a lock with the same key that is not ours to end).
THIS_LOCK = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
             f"AND l.classid = {LOCK_KEY >> 32} AND l.objid = {LOCK_KEY & 0xFFFFFFFF} "
             "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
FROZEN_HOLDER = f"""
SELECT COALESCE(bool_or(pg_terminate_backend(l.pid)), false)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE {THIS_LOCK} AND a.state = 'idle' AND a.state_change < now() - make_interval(secs => %s)
"""
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 5
TCP_USER_TIMEOUT_MS = 10_000
SESSION_ENDS_AFTER_S = TCP_USER_TIMEOUT_MS / 1000

# libpq parameters: the leader's side of the connection.
CLIENT_TCP = {"keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE_S,
              "keepalives_interval": KEEPALIVE_INTERVAL_S, "keepalives_count": KEEPALIVE_COUNT,
              "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
# Session settings (PostgreSQL 12+; anyone may set them): the server's side of the same socket,
# and a server-side bound on a statement that reached a stuck server. (idle_session_timeout
# would end a healthy leader between checks; it says nothing about a vanished peer.)
SESSION_SETTINGS = {"tcp_keepalives_idle": KEEPALIVE_IDLE_S,
                    "tcp_keepalives_interval": KEEPALIVE_INTERVAL_S,
                    "tcp_keepalives_count": KEEPALIVE_COUNT,
                    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                    "statement_timeout": int(ANSWER_TIMEOUT_S * 1000)}


# Whether a backend (the fence) holds the controller lock: in the writer's own transaction.
HOLDS_LOCK = f"SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {THIS_LOCK} AND l.pid = :fence)"


class Unanswered(Exception):
    """The database did not answer within the deadline."""


class LeaderLock:
    def __init__(self, database_url):
        self.url = database_url
        self.postgres = database_url.startswith("postgresql")
        self._params = None
        if self.postgres:
            url = make_url(database_url)
            _args, params = url.get_dialect()().create_connect_args(url)
            options = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
            self._params = {**params, **CLIENT_TCP,
                            "options": f"{params.get('options', '')} {options}".strip()}
        self._connection = None

    def try_acquire(self):
        """True when this process holds the lock (now or already)."""
        if not self.postgres:
            return True
        if self._connection is not None:
            return self.still_held()
        connection = None
        try:
            connection = self._connect()
            got = self._ask(connection, "SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        except (psycopg2.Error, Unanswered) as exc:  # the database may be away: not leader, retry
            log.warning("cannot reach the database to elect a controller: %s", exc)
            _close(connection)
            return False
        if got:
            self._connection = connection
            log.info("this controller is now the active one")
            return True
        try:
            if self._ask(connection, FROZEN_HOLDER, (LEASE_S,)):
                log.warning("the active controller has not checked its lock for %s s (frozen?): "
                            "its session was ended; taking over", LEASE_S)
        except (psycopg2.Error, Unanswered) as exc:
            log.warning("cannot check the active controller's lock: %s", exc)
        _close(connection)
        return False

    def still_held(self):
        """True when the lock's session answered within ANSWER_TIMEOUT_S. The lock cannot leave a
        live session, so an answer is proof enough; no answer is no proof: give the session up
        (its lock with it) rather than keep acting on a maybe."""
        if not self.postgres:
            return True
        if self._connection is None:
            return False
        try:
            self._ask(self._connection, "SELECT 1")
            return True
        except (psycopg2.Error, Unanswered) as exc:
            log.error("lost the controller lock: %s", exc)
            self.release()
            return False

    def release(self):
        _close(self._connection)
        self._connection = None

    def fence(self):
        """The lock session's backend pid while this process holds the lock (None on SQLite):
        writes that only the active controller may make check it (holds_lock) in their own
        transaction, so a leader that was frozen and has just run again cannot make them in the
        moment before its next check finds its session gone."""
        return self._connection.get_backend_pid() if self._connection is not None else None

    def _connect(self):
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        connection = psycopg2.connect(**self._params, async_=True)
        try:
            _wait(connection, deadline, "connecting")
        except BaseException:
            _close(connection)
            raise
        return connection

    def _ask(self, connection, statement, params=None):
        cursor = connection.cursor()
        cursor.execute(statement, params)
        _wait(connection, time.monotonic() + ANSWER_TIMEOUT_S, statement)
        return cursor.fetchone()[0]


def _wait(connection, deadline, doing):
    """Drive a non-blocking psycopg2 connection until its current step is done, or raise
    Unanswered at the deadline. poll(), not select(): a controller with thousands of agent
    links has file descriptors beyond select()'s 1024."""
    while True:
        state = connection.poll()
        if state == extensions.POLL_OK:
            return
        events = select.POLLIN if state == extensions.POLL_READ else select.POLLOUT
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(connection.fileno(), events | select.POLLERR | select.POLLHUP)
        if left <= 0 or not poller.poll(left * 1000):
            raise Unanswered(f"no answer from the database within {ANSWER_TIMEOUT_S:g} s ({doing})"
                             if doing != "connecting" else
                             f"no connection to the database within {CONNECT_TIMEOUT_S:g} s")


def _close(connection):
    # Non-blocking: closing a connection to a silent peer only queues its goodbye.
    if connection is not None:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
