"""Caddy's admin API (https://caddyserver.com/docs/api), as far as the ingress needs it.

NullOps owns one HTTP server in Caddy's config (`apps.http.servers.nullops`) and in it only the
routes whose `@id` starts with "nullops-"; every other route and server is left as it is.

The table is one `map` handler from the request's host to an upstream, followed by two fixed
routes: no upstream, the web tier's page view (landing, offline, not ready, unknown); else the
proxy. One map rather than a route per host keeps each change small for Caddy, which provisions
its whole config again on every change. Each map entry has its own @id (`nullops-host-<host>`),
so one deployment's hosts are added, changed or removed without sending the others. The admin
API listens on localhost only.
"""
import json
import urllib.error
import urllib.request

SERVER = "nullops"
PREFIX = "nullops-"
MAP_ID = "nullops-map"
PAGE_PATH = "/_nullops/ingress-page"
TIMEOUT_S = 30
DIAL = "{nullops.dial}"


class CaddyUnavailable(Exception):
    """Caddy did not answer, or refused a change; the sync starts over with a full sync."""


class CaddyAdmin:
    def __init__(self, admin_url, listen, pages_upstream):
        self.base = admin_url.rstrip("/")
        self.listen = listen
        self.pages_upstream = pages_upstream

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

    def has_our_routes(self):
        """False after Caddy restarted without its config (our map is gone), or when our server
        listens elsewhere than configured (someone changed it): both call for a full sync."""
        return (self._call("GET", f"/id/{MAP_ID}/source") is not None
                and self._call("GET", f"/config/apps/http/servers/{SERVER}/listen") == [self.listen])

    def full_sync(self, table):
        """Our server and routes with the table. Other routes in the server stay between our
        lookup (first; it only sets a placeholder) and our page and proxy routes (last).
        Returns how many foreign routes were kept."""
        config = self._call("GET", "/config/") or {}
        servers = ((config.get("apps") or {}).get("http") or {}).get("servers") or {}
        ours_before = servers.get(SERVER)
        foreign = [r for r in (ours_before or {}).get("routes") or [] if not ours(r)]
        server = {**(ours_before or {}), "listen": [self.listen],
                  "routes": self.server_routes(table, foreign),
                  "errors": {"routes": [self.error_route()]},
                  # Certificates are the operator's choice (docs/ingress.md), never automatic.
                  "automatic_https": {"disable": True}}
        if ours_before is None:
            servers[SERVER] = server
            config.setdefault("apps", {}).setdefault("http", {})["servers"] = servers
            self._call("POST", "/load", config)
        else:
            self._call("PATCH", f"/config/apps/http/servers/{SERVER}", server)
        return len(foreign)

    def set_table(self, table):
        self._call("PATCH", f"/id/{MAP_ID}/mappings", mappings(table))

    def mapped(self):
        """The map's entries as Caddy has them, {host: upstream}, or None when one of them is
        not as NullOps writes it (no @id, or another one): drift a full sync repairs."""
        entries = self._call("GET", f"/id/{MAP_ID}/mappings") or []
        table = {}
        for entry in entries:
            outputs = entry.get("outputs") or []
            host = entry.get("input")
            if entry.get("@id") != host_id(host) or len(outputs) != 1 or host in table:
                return None
            table[host] = outputs[0]
        return table

    def change(self, added, removed, moved):
        """Only these hosts (issue 19): `added` and `moved` {host: upstream}, `removed` hosts.
        Caddy provisions its config again on each call, so the additions go as one. A host that
        is not where we think (drift) fails the call: CaddyUnavailable, then a full sync."""
        for host in removed:
            self._call("DELETE", f"/id/{host_id(host)}")
        for host, dial in moved.items():
            self._call("PATCH", f"/id/{host_id(host)}/outputs", [dial])
        if added:
            self._call("POST", f"/id/{MAP_ID}/mappings/...", mappings(added))

    def server_routes(self, table, foreign):
        lookup = {"@id": "nullops-lookup", "handle": [{
            "@id": MAP_ID, "handler": "map", "source": "{http.request.host}", "destinations": [DIAL],
            "mappings": mappings(table), "defaults": [""]}]}
        page = {"@id": "nullops-page", "match": [{"vars": {DIAL: [""]}}], "terminal": True, "handle": [
            {"handler": "rewrite", "uri": PAGE_PATH},
            {"handler": "reverse_proxy", "upstreams": [{"dial": self.pages_upstream}]}]}
        proxy = {"@id": "nullops-proxy", "terminal": True,
                 "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": DIAL}]}]}
        return [lookup, *foreign, page, proxy]

    @staticmethod
    def error_route():
        """A service or the page view not answering: a page that says so, not an empty 502."""
        from app.ingress import pages

        return {"@id": "nullops-error", "handle": [{
            "handler": "static_response", "status_code": "{http.error.status_code}",
            "body": pages.unreachable().replace("{", "&#123;").replace("}", "&#125;"),
            "headers": {"Content-Type": ["text/html; charset=utf-8"], "Cache-Control": ["no-store"]}}]}


def ours(route):
    return str(route.get("@id", "")).startswith(PREFIX)


def host_id(host):
    """Each map entry's own @id, so that one host can be changed or removed alone. Hosts are DNS
    names (app/services/names.py), safe in a URL path and in Caddy's @id."""
    return f"{PREFIX}host-{host}"


def mappings(table):
    return [{"@id": host_id(host), "input": host, "outputs": [dial]} for host, dial in sorted(table.items())]
