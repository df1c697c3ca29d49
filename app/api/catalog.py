"""Projects (with their limits) and environments, and project secrets."""
from flask_login import current_user
from sqlalchemy import select

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import (
    AccessOut,
    EnvironmentCreate,
    EnvironmentOut,
    EnvironmentUpdate,
    Page,
    Pagination,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    SecretList,
    SecretOut,
    SecretPut,
)
from app.extensions import db
from app.models import Environment, Project, ProjectSecret
from app.services import catalog


def _actor():
    return current_user._get_current_object()


def _settings(data):
    """The model's own settings a create request gives (projects: cpus, memory_mb,
    cleanup_minutes; environments: base_domain, cleanup_minutes)."""
    return data.model_dump(exclude={"name", "description"}, exclude_none=True)


def _changed_settings(data):
    """The settings a change request names, null included: a project's cleanup_minutes null
    means the environment's default (the service ignores null for the others)."""
    return {key: getattr(data, key) for key in data.model_fields_set - {"name", "description"}}


def _register(model, plural, label, create_schema, update_schema, out):
    """The same five routes for projects and environments, plus the caller's access."""
    tag = plural

    def list_(params):
        return paginate(access.visible(current_user, model).order_by(model.name), params, out)

    def create(data):
        access.require(current_user, "create", model)
        return dump(out, catalog.create(_actor(), model, data.name, data.description,
                                        **_settings(data)))

    def get(obj_id):
        return dump(out, access.get_visible(current_user, model, obj_id, label))

    def update(obj_id, data):
        obj = access.get_visible(current_user, model, obj_id, label)
        access.require(current_user, "manage", obj)
        return dump(out, catalog.update(_actor(), obj, data.name, data.description,
                                        **_changed_settings(data)))

    def delete(obj_id):
        obj = access.get_visible(current_user, model, obj_id, label)
        access.require(current_user, "manage", obj)
        catalog.delete(_actor(), obj)

    def my_access(obj_id):
        obj = access.get_visible(current_user, model, obj_id, label)
        level = "admin" if current_user.is_admin else access.level_on(current_user, obj).value
        return {"level": level, **{a: access.can(current_user, a, obj)
                                   for a in ("view", "deploy", "manage")}}

    item = f"/{plural}/<int:obj_id>"
    for fn, name in ((list_, "list"), (create, "create"), (get, "get"), (update, "update"),
                     (delete, "delete"), (my_access, "access")):
        fn.__name__ = f"{name}_{label}"
    operation("GET", f"/{plural}", summary=f"{label.title()}s the caller may view", tag=tag,
              query=Pagination, response=Page[out])(list_)
    operation("POST", f"/{plural}", summary=f"Create a {label}", tag=tag, body=create_schema,
              response=out, status=201)(create)
    operation("GET", item, summary=f"One {label}", tag=tag, response=out)(get)
    operation("PATCH", item, summary=f"Change a {label}", tag=tag, body=update_schema,
              response=out)(update)
    belongings = "grants and nodes" if model is Environment else "grants"
    operation("DELETE", item, summary=f"Delete a {label} and its {belongings}", tag=tag,
              status=204)(delete)
    operation("GET", f"{item}/access", summary=f"What the caller may do on a {label}", tag=tag,
              response=AccessOut)(my_access)


_register(Project, "projects", "project", ProjectCreate, ProjectUpdate, ProjectOut)
_register(Environment, "environments", "environment", EnvironmentCreate, EnvironmentUpdate,
          EnvironmentOut)


def _managed_project(project_id):
    project = access.get_visible(current_user, Project, project_id, "project")
    access.require(current_user, "manage", project)
    return project


@operation("GET", "/projects/<int:project_id>/secrets", summary="A project's secret names",
           tag="projects", response=SecretList)
def list_secrets(project_id):
    project = _managed_project(project_id)
    rows = db.session.scalars(
        select(ProjectSecret).where(ProjectSecret.project_id == project.id).order_by(ProjectSecret.name)
    )
    return {"items": [dump(SecretOut, row) for row in rows]}


@operation("PUT", "/projects/<int:project_id>/secrets/<name>",
           summary="Create or replace a secret (write-only: values are never returned)",
           tag="projects", body=SecretPut, response=SecretOut)
def put_secret(project_id, name, data):
    secret, _created = catalog.put_secret(_actor(), _managed_project(project_id), name, data.value)
    return dump(SecretOut, secret)


@operation("DELETE", "/projects/<int:project_id>/secrets/<name>", summary="Delete a secret",
           tag="projects", status=204)
def delete_secret(project_id, name):
    catalog.delete_secret(_actor(), _managed_project(project_id), name)
