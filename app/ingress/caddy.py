"""Caddy's admin API (https://caddyserver.com/docs/api), as far as the ingress needs it.

NullOps owns one HTTP server in Caddy's config (`apps.http.servers.nullops`) and, inside it,
only the routes whose `@id` starts with ROUTE_PREFIX; every other route and server is left as
it is. The admin API listens on localhost only (ARCHITECTURE.md).
"""
import json
import urllib.error
import urllib.request

from app.ingress.routes import Route

SERVER = "nullops"
ROUTE_PREFIX = "nullops-route-"
CATCH_ALL_ID = "nullops-catch-all"
TIMEOUT_S = 5


class CaddyUnavailable(Exception):
    """Caddy did not answer, or refused a change; the sync starts over with a full sync."""


class CaddyAdmin:
    def __init__(self, admin_url, listen):
        self.base = admin_url.rstrip("/")
        self.listen = listen

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise CaddyUnavailable(f"Caddy refused {method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CaddyUnavailable(f"Caddy's admin API at {self.base} is unreachable: "
                                   f"{getattr(exc, 'reason', exc)}") from None
        return json.loads(raw) if raw.strip() else None

    # --- reading -----------------------------------------------------------------------------
    def has_our_routes(self):
        """False after Caddy restarted without its config (our catch-all is gone)."""
        return self._call("GET", f"/id/{CATCH_ALL_ID}") is not None

    def server_routes(self):
        return self._call("GET", f"/config/apps/http/servers/{SERVER}/routes") or []

    # --- writing -----------------------------------------------------------------------------
    def ensure_server(self):
        """Create our server if Caddy has none, keeping the rest of its config."""
        config = self._call("GET", "/config/") or {}
        servers = ((config.get("apps") or {}).get("http") or {}).get("servers") or {}
        if SERVER in servers:
            return
        servers[SERVER] = {"listen": [self.listen], "routes": [catch_all()],
                           # Certificates are the operator's choice (docs/ingress.md), not automatic.
                           "automatic_https": {"disable": True}}
        config.setdefault("apps", {}).setdefault("http", {})["servers"] = servers
        self._call("POST", "/load", config)

    def replace_routes(self, routes):
        self._call("PATCH", f"/config/apps/http/servers/{SERVER}/routes", routes)

    def insert(self, route):
        self._call("PUT", f"/config/apps/http/servers/{SERVER}/routes/0", caddy_route(route))

    def change(self, route):
        self._call("PATCH", f"/id/{route_id(route.host)}", caddy_route(route))

    def remove(self, host):
        try:
            self._call("DELETE", f"/id/{route_id(host)}")
        except CaddyUnavailable:
            if self._call("GET", f"/id/{route_id(host)}") is not None:
                raise  # still there: a real failure


def route_id(host):
    return ROUTE_PREFIX + host


def ours(route):
    return str(route.get("@id", "")).startswith((ROUTE_PREFIX, CATCH_ALL_ID))


def _html(status, body):
    return {"handler": "static_response", "status_code": status, "body": body,
            "headers": {"Content-Type": ["text/html; charset=utf-8"], "Cache-Control": ["no-store"]}}


def caddy_route(route: Route):
    handler = ({"handler": "reverse_proxy", "upstreams": [{"dial": route.dial}]} if route.dial
               else _html(route.status, route.body))
    return {"@id": route_id(route.host), "match": [{"host": [route.host]}], "handle": [handler],
            "terminal": True}


def catch_all():
    from app.ingress import pages

    return {"@id": CATCH_ALL_ID, "handle": [_html(404, pages.unknown())], "terminal": True}
