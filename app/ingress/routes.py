"""The route table, derived from the database only (level-triggered: the same rows always give
the same table). {host name: Route} for every live deployment:

- `<service>.<deployment>.<environment>.<base domain>`: a proxy to the node's host and the
  port the agent published for the service's first exposed port, when the deployment is ready
  (or degraded) on an online node; otherwise a page: 503 offline (since when), 503 not ready.
- `<deployment>.<environment>.<base domain>`: a landing page with the services and status.
Deleted and deleting deployments have no routes: their hosts fall through to the 404 page.
"""
from dataclasses import dataclass

from sqlalchemy import select

from app.extensions import db
from app.ingress import pages
from app.models import Deployment, Environment, Node, PipelineVersion

PROXIED = ("ready", "degraded")
NO_ROUTE = ("deleting", "cleanup_failed", "deleted")


@dataclass(frozen=True)
class Route:
    host: str
    dial: str | None = None      # "host:port" to proxy to, or None for a page
    status: int = 200
    body: str = ""


class ExposedPorts:
    """{pipeline version id: {service step: first exposed port}}; versions never change, so
    each is read once per controller."""

    def __init__(self):
        self._known = {}

    def of(self, version_ids):
        missing = set(version_ids) - self._known.keys()
        if missing:
            rows = db.session.execute(select(PipelineVersion.id, PipelineVersion.resolved)
                                      .where(PipelineVersion.id.in_(missing)))
            for version_id, resolved in rows:
                self._known[version_id] = {
                    step["id"]: (step.get("exposed_ports") or [None])[0]
                    for step in resolved["steps"] if step["kind"] == "service"}
        return self._known


def route_table(exposed):
    rows = db.session.execute(
        select(Deployment.name, Deployment.status, Deployment.status_message,
               Deployment.status_changed_at, Deployment.published, Deployment.pipeline_version_id,
               Environment.name.label("environment"), Environment.base_domain,
               Node.host.label("node_host"), Node.status.label("node_status"),
               Node.status_changed_at.label("node_since"))
        .join(Environment, Environment.id == Deployment.environment_id)
        .outerjoin(Node, Node.id == Deployment.node_id)
        .where(Deployment.deleted_at.is_(None), Deployment.status.not_in(NO_ROUTE))
    ).all()
    ports = exposed.of({row.pipeline_version_id for row in rows})
    table = {}
    for row in rows:
        base = f"{row.name}.{row.environment}.{row.base_domain}"
        listed = []
        for step_id, port in sorted(ports.get(row.pipeline_version_id, {}).items()):
            if port is None:
                listed.append((step_id, None, "exposes no port: reachable inside the deployment only"))
                continue
            host = f"{step_id}.{base}"
            listed.append((step_id, f"http://{host}", ""))
            table[host] = _service_route(row, host, step_id, port)
        table[base] = Route(base, body=pages.landing(row.name, row.environment, _shown_status(row),
                                                     listed))
    return table


def _shown_status(row):
    if row.status in PROXIED and row.node_status != "online":
        return "offline"
    return row.status


def _service_route(row, host, step_id, port):
    published = ((row.published or {}).get(step_id) or {}).get("ports") or {}
    target = published.get(str(port))
    if row.status in PROXIED and row.node_status == "online" and target and row.node_host:
        node_host = f"[{row.node_host}]" if ":" in row.node_host else row.node_host
        return Route(host, dial=f"{node_host}:{target}")
    if row.status == "offline" or (row.status in PROXIED and row.node_status != "online"):
        since = row.node_since if row.status in PROXIED else row.status_changed_at
        return Route(host, status=503, body=pages.offline(row.name, {"since": since}))
    return Route(host, status=503, body=pages.not_ready(row.name, row.status, row.status_message))
