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
    second and looks at what changed only when it did (or when woken). Returns (counters,
    environments): a change of an environment (its name, its base domain) moves all its routes
    and calls for the whole table; the counters only for the changed deployments."""
    counters = db.session.execute(select(
        select(func.count(Deployment.id)).where(Deployment.status.in_(PROXIED)).scalar_subquery(),
        select(func.max(Deployment.status_changed_at)).scalar_subquery(),
        select(func.max(Deployment.id)).scalar_subquery(),
        select(func.max(Node.status_changed_at)).scalar_subquery(),
        select(func.count(Node.id)).scalar_subquery(),
    )).one()
    environments = db.session.execute(
        select(Environment.id, Environment.name, Environment.base_domain).order_by(Environment.id))
    return tuple(counters), tuple(tuple(row) for row in environments)


def changed_since(since):
    """Ids of the deployments whose status, or whose node's status, changed at or after `since`
    (the ones whose routes may differ; issue 19: only they are looked at again)."""
    own = select(Deployment.id).where(Deployment.status_changed_at >= since)
    by_node = select(Deployment.id).join(Node, Node.id == Deployment.node_id).where(
        Node.status_changed_at >= since, Deployment.deleted_at.is_(None))
    return set(db.session.scalars(own.union(by_node)))


def routes_by_deployment(ids=None, version_ports=VERSION_PORTS):
    """{deployment id: {service host: upstream}} for the routed deployments, of `ids` only when
    given (a deployment of `ids` that is not routed is left out)."""
    query = (
        select(Deployment.id, Deployment.name, Deployment.published, Deployment.pipeline_version_id,
               PipelineVersion.created_at.label("version_created_at"),
               Environment.name.label("environment"), Environment.base_domain,
               Node.host.label("node_host"))
        .join(PipelineVersion, PipelineVersion.id == Deployment.pipeline_version_id)
        .join(Environment, Environment.id == Deployment.environment_id)
        .join(Node, Node.id == Deployment.node_id)
        .where(Deployment.deleted_at.is_(None), Deployment.status.in_(PROXIED),
               Node.status == "online"))
    if ids is not None:
        query = query.where(Deployment.id.in_(ids))
    rows = db.session.execute(query).all()
    ports = version_ports.of({(row.pipeline_version_id, row.version_created_at) for row in rows})
    routes = {}
    for row in rows:
        node_host = f"[{row.node_host}]" if ":" in row.node_host else row.node_host
        for step_id, port in ports[(row.pipeline_version_id, row.version_created_at)].items():
            published = ((row.published or {}).get(step_id) or {}).get("ports") or {}
            if port is not None and published.get(str(port)):
                host = f"{step_id}.{row.name}.{row.environment}.{row.base_domain}"
                routes.setdefault(row.id, {})[host] = f"{node_host}:{published[str(port)]}"
    return routes


def route_table(version_ports=VERSION_PORTS):
    """{service host: upstream} for every routed deployment."""
    table = {}
    for hosts in routes_by_deployment(version_ports=version_ports).values():
        table.update(hosts)
    return table
