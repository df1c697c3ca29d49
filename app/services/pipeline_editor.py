"""What the visual pipeline editor needs beside a version: the catalog it draws from (services
with their ports and readiness, plugins with the JSON Schema of their params), the project's
secret names it offers as ${secrets.NAME}, and whether the user may save. The editor saves
through the ordinary versions API; the server stays the judge of validity (app/services/
pipelines.py)."""
from sqlalchemy import select

from app.extensions import db
from app.models import Plugin, ProjectSecret, Service
from app.services import pipelines


def _service(row):
    return {"name": row.name, "description": row.description, "ports": list(row.ports or []),
            "exposed_ports": list(row.exposed_ports or []), "env": dict(row.env or {}),
            "health_check": row.health_check, "tag_mode": row.tag_mode}


def _plugin(row):
    return {"name": row.name, "description": row.description, "image": row.image, "tag": row.tag,
            "params_schema": row.params_schema or {}, "cpus": row.cpus, "memory_mb": row.memory_mb}


def editor_data(project, services, plugins, can_manage):
    """`services` and `plugins`: select()s of the rows the user may view (access.visible).
    Secret names only for those who may manage the project: the secrets API shows them to no
    one else."""
    secrets = []
    if can_manage:
        secrets = list(db.session.scalars(select(ProjectSecret.name).where(
            ProjectSecret.project_id == project.id).order_by(ProjectSecret.name)))
    latest = pipelines.latest_version(project)
    return {
        "project_id": project.id, "can_manage": can_manage,
        "latest": latest.number if latest is not None else None,
        "services": [_service(r) for r in db.session.scalars(services.order_by(Service.name))],
        "plugins": [_plugin(r) for r in db.session.scalars(plugins.order_by(Plugin.name))],
        "secrets": secrets,
        "service_attributes": list(pipelines.SERVICE_ATTRIBUTES),
    }
