"""Keeps Caddy's routes equal to the route table: a full sync when the controller starts and
whenever Caddy was away or lost its config; otherwise one change (the host map) whenever the
table differs. Runs in the active controller; killed and restarted, it converges again."""
import asyncio
import logging
import time

from app.extensions import db
from app.ingress import caddy
from app.ingress.routes import fingerprint, route_table

log = logging.getLogger("nullops.ingress")
POLL_S = 0.5
# Caddy's admin API is on this host: asking it again costs nothing, and a retry grown to 15 s kept
# the routes wrong for 12 s after Caddy came back (tests/chaos/test_caddy_outage.py).
RETRY_FIRST_S, RETRY_CAP_S = 1.0, 2.0
REBUILD_S = 15.0   # the table is rebuilt at least this often, changed fingerprint or not


class IngressSync:
    def __init__(self, app, admin_url, listen, pages_upstream):
        self.app = app
        self.caddy = caddy.CaddyAdmin(admin_url, listen, pages_upstream)
        self.applied = None   # {host: upstream} Caddy has, as far as we know; None: unknown
        self._seen = None     # the fingerprint the applied table was built from
        self._built_at = 0.0
        self._wake = None
        self._woken = False   # a wake-up rebuilds the table even if the fingerprint is the same
        self._loop = None

    def wake(self):
        """Recompute now (thread-safe): a deployment became ready, went offline, was deleted."""
        self._woken = True
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stopping):
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        failures = 0
        while not stopping.is_set():
            self._wake.clear()   # before the round: a wake-up during it starts the next at once
            woken, self._woken = self._woken, False
            try:
                await asyncio.to_thread(self.round, woken)
                failures, delay = 0, POLL_S
            except caddy.CaddyUnavailable as exc:
                self._woken = self._woken or woken
                failures += 1
                delay = min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s; retrying in %.0f s", exc, delay)
                self.applied = None
            except Exception:  # noqa: BLE001 - the database may be away: try again
                log.exception("ingress round failed")
                delay = RETRY_FIRST_S
            waiters = {asyncio.create_task(self._wake.wait()), asyncio.create_task(stopping.wait())}
            done, pending = await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for task in done | pending:
                task.cancel()

    def round(self, force=False):
        with self.app.app_context():
            try:
                seen = fingerprint()
                fresh = time.monotonic() - self._built_at < REBUILD_S
                if not force and self.applied is not None and seen == self._seen and fresh:
                    table = self.applied
                else:
                    table = route_table()
                    self._seen, self._built_at = seen, time.monotonic()
            finally:
                db.session.remove()
        if self.applied is None or not self.caddy.has_our_routes():
            self.full_sync(table)
        elif table != self.applied:
            self.caddy.set_table(table)
            self.applied = table

    def full_sync(self, table):
        foreign = self.caddy.full_sync(table)
        self.applied = table
        log.info("ingress: full sync, %d hosts (%d foreign routes kept)", len(table), foreign)
