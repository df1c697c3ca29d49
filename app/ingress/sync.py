"""Keeps Caddy's routes equal to the route table: a full sync when the controller starts and
whenever Caddy was away or lost its config, small changes (insert, patch, delete by @id)
otherwise. Runs in the active controller; killed and restarted, it converges again."""
import asyncio
import logging

from app.extensions import db
from app.ingress import caddy
from app.ingress.routes import ExposedPorts, route_table

log = logging.getLogger("nullops.ingress")
POLL_S = 0.5
RETRY_FIRST_S, RETRY_CAP_S = 1.0, 15.0


class IngressSync:
    def __init__(self, app, admin_url, listen):
        self.app = app
        self.caddy = caddy.CaddyAdmin(admin_url, listen)
        self.exposed = ExposedPorts()
        self.applied = None   # {host: Route} Caddy has, as far as we know; None: unknown
        self._wake = None
        self._loop = None

    def wake(self):
        """Recompute now (thread-safe): a deployment became ready, went offline, was deleted."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stopping):
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        failures = 0
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.round)
                failures, delay = 0, POLL_S
            except caddy.CaddyUnavailable as exc:
                failures += 1
                delay = min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s; retrying in %.0f s", exc, delay)
                self.applied = None
            except Exception:  # noqa: BLE001 - the database may be away: try again
                log.exception("ingress round failed")
                delay = RETRY_FIRST_S
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def round(self):
        with self.app.app_context():
            try:
                table = route_table(self.exposed)
            finally:
                db.session.remove()
        if self.applied is None or not self.caddy.has_our_routes():
            self.full_sync(table)
        else:
            self.apply_changes(table)

    def full_sync(self, table):
        self.caddy.ensure_server()
        foreign = [route for route in self.caddy.server_routes() if not caddy.ours(route)]
        routes = [caddy.caddy_route(table[host]) for host in sorted(table)]
        self.caddy.replace_routes(routes + foreign + [caddy.catch_all()])
        self.applied = dict(table)
        log.info("ingress: full sync, %d routes (%d foreign routes kept)", len(table), len(foreign))

    def apply_changes(self, table):
        for host in sorted(self.applied.keys() - table.keys()):
            self.caddy.remove(host)
            del self.applied[host]
        for host, route in sorted(table.items()):
            known = self.applied.get(host)
            if known == route:
                continue
            if known is None:
                self.caddy.insert(route)
            else:
                self.caddy.change(route)
            self.applied[host] = route
