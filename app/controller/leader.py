"""One active controller: a PostgreSQL advisory lock elects it, a second one waits.

The lock lives as long as the session that took it: the leader keeps one dedicated connection
open and checks it every second; if the connection dies, leadership is gone and the controller
stops acting at once. A waiting controller retries every second, so a takeover happens within
a couple of seconds of the leader's death (its session ends with its process).
SQLite (`nullops dev`) has one process by construction: it is always the leader.
"""
import logging

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger("nullops.controller.leader")

# An arbitrary, fixed 64-bit key: "nullops controller".
LOCK_KEY = 0x6E756C6C6F7073


class LeaderLock:
    def __init__(self, database_url):
        self.url = database_url
        self.postgres = database_url.startswith("postgresql")
        self._engine = create_engine(database_url, poolclass=NullPool) if self.postgres else None
        self._connection = None

    def try_acquire(self):
        """True when this process holds the lock (now or already)."""
        if not self.postgres:
            return True
        if self._connection is not None:
            return self.still_held()
        try:
            connection = self._engine.connect()
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar()
            connection.commit()
        except Exception as exc:  # noqa: BLE001 - the database may be down: not leader, retry
            log.warning("cannot reach the database to elect a controller: %s", exc)
            return False
        if got:
            self._connection = connection
            log.info("this controller is now the active one")
            return True
        connection.close()
        return False

    def still_held(self):
        if not self.postgres:
            return True
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except Exception:  # noqa: BLE001 - the session is gone, and the lock with it
            log.error("lost the controller lock (database session ended)")
            self.release()
            return False

    def release(self):
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001
                pass
            self._connection = None
