"""Keeps Caddy's routes equal to the route table. Runs in the active controller; killed and
restarted, it converges again.

- A full sync (our server and the whole map) when the controller starts and whenever Caddy was
  away or lost its config.
- Incremental changes otherwise (issue 19): when the fingerprint moved, or a write woke it, only
  the deployments whose status (or whose node's) changed lately are read again, and only their
  hosts are added, changed or removed in Caddy's map, one entry each by its @id.
- The safety net: every REBUILD_S the whole table is read again; what the incremental rounds
  missed is sent, and a map that is not what NullOps applied (someone edited it, a call got
  lost) is replaced whole.
"""
import asyncio
import datetime
import logging
import time

from app.extensions import db
from app.ingress import caddy
from app.ingress.routes import changed_since, fingerprint, routes_by_deployment
from app.models.types import utcnow

log = logging.getLogger("nullops.ingress")
POLL_S = 0.5
# Caddy's admin API is on this host: asking it again costs nothing, and a retry grown to 15 s kept
# the routes wrong for 12 s after Caddy came back (tests/chaos/test_caddy_outage.py).
RETRY_FIRST_S, RETRY_CAP_S = 1.0, 2.0
# The whole table is read and checked against Caddy at least this often. Not more: a change
# that arrives during that read (about 0.15 s at 5,000 routes) waits for it.
REBUILD_S = 30.0
# A change is looked for this far back from the last look: a transaction commits a moment after
# it stamps status_changed_at, and the web hosts' clocks may run a little behind the
# controller's. What slips through anyway is repaired by the next full round.
LOOK_BACK = datetime.timedelta(seconds=5)
# More host changes than this in one round: replacing the map is one call instead of many.
INCREMENTAL_MAX = 50


class IngressSync:
    def __init__(self, app, admin_url, listen, pages_upstream):
        self.app = app
        self.caddy = caddy.CaddyAdmin(admin_url, listen, pages_upstream)
        self.applied = None   # {host: upstream} Caddy has, as far as we know; None: unknown
        self._owners = {}     # deployment id -> {host: upstream}, what `applied` is made of
        self._seen = None     # the fingerprint `applied` was brought up to
        self._since = None    # changes at or after this are looked at by the next round
        self._built_at = 0.0  # when the whole table was last read
        self._wake = None
        self._woken = False   # a wake-up looks for changes even if the fingerprint is the same
        self._touched = set()  # deployment ids the controller wrote events of, looked at next
        self._loop = None
        self.rounds = {"full": 0, "incremental": 0, "repaired": 0}  # for tests and benchmarks

    def wake(self, deployment_ids=()):
        """Look now (thread-safe): a deployment became ready, went offline, was deleted; at
        `deployment_ids` too, whatever their status says (new published ports, say). Ids come
        from the controller's own event loop only, the thread that hands them to the round."""
        self._touched.update(i for i in deployment_ids if i is not None)
        self._woken = True
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stopping):
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        failures = 0
        while not stopping.is_set():
            self._wake.clear()   # before the round: a wake-up during it starts the next at once
            woken, self._woken = self._woken, False
            touched, self._touched = self._touched, set()
            try:
                await asyncio.to_thread(self.round, woken, touched)
                failures, delay = 0, POLL_S
            except caddy.CaddyUnavailable as exc:
                self._woken = self._woken or woken
                failures += 1
                delay = min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s; retrying in %.0f s", exc, delay)
                self.applied = None
            except Exception:  # noqa: BLE001 - the database may be away: try again
                self._touched.update(touched)
                log.exception("ingress round failed")
                delay = RETRY_FIRST_S
            waiters = {asyncio.create_task(self._wake.wait()), asyncio.create_task(stopping.wait())}
            done, pending = await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for task in done | pending:
                task.cancel()

    def round(self, force=False, touched=()):
        with self.app.app_context():
            try:
                looked_at = utcnow()
                seen = fingerprint()
                whole = (self.applied is None or self._seen is None or seen[1] != self._seen[1]
                         or time.monotonic() - self._built_at >= REBUILD_S)
                if whole:
                    changed, routes = None, routes_by_deployment()
                elif force or touched or seen != self._seen:
                    changed = changed_since(self._since) | set(touched)
                    routes = routes_by_deployment(changed) if changed else {}
                else:
                    changed, routes = set(), {}
            finally:
                db.session.remove()
        if whole:
            self._whole(routes)
        elif changed:
            self._changes(changed, routes)
        elif not self.caddy.has_our_routes():
            self.full_sync(self.applied)
        self._seen, self._since = seen, looked_at - LOOK_BACK

    def _whole(self, routes):
        """The whole table: a full sync when Caddy lacks our routes; else Caddy's map is checked
        against what we applied: the same, only the difference to the table is sent (a change
        that came in meanwhile, or one the incremental rounds missed); not the same (someone
        edited it, a call got lost), the map is replaced."""
        table = {host: dial for hosts in routes.values() for host, dial in hosts.items()}
        self._built_at = time.monotonic()
        if self.applied is None or not self.caddy.has_our_routes():
            self.full_sync(table)
        elif self.caddy.mapped() != self.applied:
            self.caddy.set_table(table)
            self.rounds["repaired"] += 1
            log.warning("ingress: Caddy's map was not what NullOps applied; replaced (%d hosts)",
                        len(table))
        else:
            self._send(table, set(table) | set(self.applied))
        self.applied, self._owners = table, routes
        self.rounds["full"] += 1

    def _changes(self, changed, routes):
        """Only the hosts of the changed deployments, in as few calls as Caddy allows."""
        table = dict(self.applied)
        affected = set()
        for deployment_id in changed:
            for host in self._owners.pop(deployment_id, {}):
                affected.add(host)
                table.pop(host, None)
        for deployment_id, hosts in routes.items():
            self._owners[deployment_id] = hosts
            affected.update(hosts)
            table.update(hosts)
        try:
            self._send(table, affected)
        except caddy.CaddyUnavailable:
            # Caddy restarted without our routes (the usual reason a call by @id fails): a full
            # sync now rather than after the retry delay. Anything else: the caller retries.
            if self.caddy.has_our_routes():
                raise
            self.full_sync(table)
        self.applied = table
        self.rounds["incremental"] += 1

    def _send(self, table, hosts):
        """`table` replaces `self.applied` in Caddy, where they may differ only at `hosts`."""
        added = {h: table[h] for h in hosts if h in table and h not in self.applied}
        moved = {h: table[h] for h in hosts if h in table and h in self.applied
                 and table[h] != self.applied[h]}
        removed = [h for h in hosts if h not in table and h in self.applied]
        if len(added) + len(moved) + len(removed) > INCREMENTAL_MAX:
            self.caddy.set_table(table)
        elif added or moved or removed:
            self.caddy.change(added, removed, moved)

    def full_sync(self, table):
        foreign = self.caddy.full_sync(table)
        self.applied = table
        log.info("ingress: full sync, %d hosts (%d foreign routes kept)", len(table), foreign)
