"""The page the ingress shows for every host it does not proxy. Caddy sends such requests here
(app/ingress/caddy.py) with the original Host header; no login: the page tells no more than the
URL already does (the deployment's name, its services and status)."""
from flask import Blueprint, Response, current_app, request
from sqlalchemy import select

from app.extensions import db
from app.ingress import pages
from app.ingress.caddy import PAGE_PATH
from app.ingress.routes import PROXIED
from app.models import Deployment, Environment
from app.services.specs import exposed_ports, service_urls

bp = Blueprint("ingress_pages", __name__)
PUBLIC_ENDPOINTS = frozenset({"ingress_pages.ingress_page"})
GONE = ("deleting", "cleanup_failed", "deleted")


def _html(body, status):
    return Response(body, status=status, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


def _locate(host):
    """(environment, deployment name, service step or None) of a host name, or None."""
    for environment in db.session.scalars(select(Environment)):
        suffix = f".{environment.name}.{environment.base_domain}".lower()
        if host.endswith(suffix):
            labels = host[: -len(suffix)].split(".")
            if len(labels) == 1:
                return environment, labels[0], None
            if len(labels) == 2:
                return environment, labels[1], labels[0]
    return None


@bp.get(PAGE_PATH)
def ingress_page():
    host = request.host.rsplit(":", 1)[0].lower().rstrip(".")
    located = _locate(host)
    deployment = None
    if located is not None:
        environment, name, step = located
        deployment = db.session.scalar(select(Deployment).where(
            Deployment.environment_id == environment.id, Deployment.name == name,
            Deployment.deleted_at.is_(None)))
    if deployment is None or deployment.status in GONE:
        return _html(pages.unknown(), 404)
    services = exposed_ports(deployment.pipeline_version.resolved)
    node_online = deployment.node is not None and deployment.node.status == "online"
    status = "offline" if deployment.status in PROXIED and not node_online else deployment.status
    if step is None:
        urls = service_urls(deployment)
        inside_only = "exposes no port: reachable inside the deployment only"
        listed = [(sid, urls.get(sid), "" if sid in urls else inside_only) for sid in sorted(services)]
        return _html(pages.landing(deployment.name, environment.name, status, listed), 200)
    if step not in services:
        return _html(pages.unknown(), 404)
    if services[step] is None:
        return _html(pages.not_exposed(deployment.name, step), 404)
    if status == "offline":
        since = deployment.node.status_changed_at if deployment.status in PROXIED and deployment.node \
            else deployment.status_changed_at
        return _html(pages.offline(deployment.name, {"since": since}), 503)
    if status in PROXIED:  # ready: Caddy learns its route within a second
        return _html(pages.not_ready(deployment.name, "starting"), 503)
    return _html(pages.not_ready(deployment.name, status, _login_url(deployment)), 503)


def _login_url(deployment):
    base = current_app.config.get("NULLOPS_PUBLIC_URL")
    return f"{base}/login?next=/deployments/{deployment.id}" if base else None
