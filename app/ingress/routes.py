"""The route table, derived from the database only (level-triggered: the same rows always give
the same table): {service host: "node-host:published-port"} for every exposed service of every
deployment that is ready (or degraded) on an online node. Everything else (the deployment's own
address, offline and not-ready deployments, unknown names) is answered by the web tier's page
view (app/ingress/page_view.py), so Caddy's config stays small: Caddy provisions its whole
config again on every change (benchmarks/ingress.py measured 10,000 page routes at seconds per
change).
"""
from sqlalchemy import func, select

from app.extensions import db
from app.models import Deployment, Environment, Node, PipelineVersion

PROXIED = ("ready", "degraded")


class ExposedPorts:
    """{pipeline version id: {service step: first exposed port or None}}; versions never
    change, so each is read once per process."""

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


def fingerprint():
    """Cheap to read and different whenever the table may be: the sync reads it every half
    second and rebuilds the table only when it changed (or when woken, or now and then: clocks
    of several hosts may be skewed, app/ingress/sync.py)."""
    counters = db.session.execute(select(
        select(func.count(Deployment.id)).where(Deployment.status.in_(PROXIED)).scalar_subquery(),
        select(func.max(Deployment.status_changed_at)).scalar_subquery(),
        select(func.max(Deployment.id)).scalar_subquery(),
        select(func.max(Node.status_changed_at)).scalar_subquery(),
        select(func.count(Node.id)).scalar_subquery(),
    )).one()
    environments = db.session.execute(
        select(Environment.id, Environment.name, Environment.base_domain).order_by(Environment.id))
    return tuple(counters) + tuple(tuple(row) for row in environments)


def route_table(exposed):
    rows = db.session.execute(
        select(Deployment.name, Deployment.published, Deployment.pipeline_version_id,
               Environment.name.label("environment"), Environment.base_domain,
               Node.host.label("node_host"))
        .join(Environment, Environment.id == Deployment.environment_id)
        .join(Node, Node.id == Deployment.node_id)
        .where(Deployment.deleted_at.is_(None), Deployment.status.in_(PROXIED),
               Node.status == "online")
    ).all()
    ports = exposed.of({row.pipeline_version_id for row in rows})
    table = {}
    for row in rows:
        node_host = f"[{row.node_host}]" if ":" in row.node_host else row.node_host
        for step_id, port in ports.get(row.pipeline_version_id, {}).items():
            published = ((row.published or {}).get(step_id) or {}).get("ports") or {}
            if port is not None and published.get(str(port)):
                host = f"{step_id}.{row.name}.{row.environment}.{row.base_domain}"
                table[host] = f"{node_host}:{published[str(port)]}"
    return table
