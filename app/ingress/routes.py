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
from app.services.specs import VERSION_PORTS

PROXIED = ("ready", "degraded")


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


def route_table(version_ports=VERSION_PORTS):
    rows = db.session.execute(
        select(Deployment.name, Deployment.published, Deployment.pipeline_version_id,
               PipelineVersion.created_at.label("version_created_at"),
               Environment.name.label("environment"), Environment.base_domain,
               Node.host.label("node_host"))
        .join(PipelineVersion, PipelineVersion.id == Deployment.pipeline_version_id)
        .join(Environment, Environment.id == Deployment.environment_id)
        .join(Node, Node.id == Deployment.node_id)
        .where(Deployment.deleted_at.is_(None), Deployment.status.in_(PROXIED),
               Node.status == "online")
    ).all()
    ports = version_ports.of({(row.pipeline_version_id, row.version_created_at) for row in rows})
    table = {}
    for row in rows:
        node_host = f"[{row.node_host}]" if ":" in row.node_host else row.node_host
        for step_id, port in ports[(row.pipeline_version_id, row.version_created_at)].items():
            published = ((row.published or {}).get(step_id) or {}).get("ports") or {}
            if port is not None and published.get(str(port)):
                host = f"{step_id}.{row.name}.{row.environment}.{row.base_domain}"
                table[host] = f"{node_host}:{published[str(port)]}"
    return table
