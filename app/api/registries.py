"""Container registries: admins manage them; every user may list their names (for forms)."""
from flask_login import current_user

from app import access
from app.api.core import operation, paginate
from app.api.schemas import (
    REGISTRY_ADMIN_FIELDS,
    Page,
    Pagination,
    RegistryCreate,
    RegistryOut,
    RegistryUpdate,
    TagList,
    TagQuery,
)
from app.models import Registry
from app.services import registries
from app.services.registries import UNCHANGED

TAG = "registries"


def _actor():
    return current_user._get_current_object()


def registry_out(registry, user):
    """Never the credentials; the URL and whether credentials are set only for managers."""
    data = {field: getattr(registry, field) for field in RegistryOut.model_fields}
    hidden = set() if access.can(user, "manage", registry) else REGISTRY_ADMIN_FIELDS
    return RegistryOut.model_validate(data).model_dump(mode="json", exclude=hidden)


def _registry(registry_id, action="manage"):
    registry = access.get_visible(current_user, Registry, registry_id, "registry")
    access.require(current_user, action, registry)
    return registry


@operation("GET", "/registries", summary="Registries (names for everyone; details for admins)",
           tag=TAG, query=Pagination, response=Page[RegistryOut])
def list_registries(params):
    stmt = access.visible(current_user, Registry).order_by(Registry.is_default.desc(), Registry.name)
    return paginate(stmt, params, shape=lambda registry: registry_out(registry, current_user))


@operation("POST", "/registries", summary="Add a registry (credentials are write-only)", tag=TAG,
           body=RegistryCreate, response=RegistryOut, status=201)
def create_registry(data):
    access.require(current_user, "create", Registry)
    registry = registries.create(_actor(), data.name, data.url, data.username, data.password)
    return registry_out(registry, current_user)


@operation("GET", "/registries/<int:registry_id>", summary="One registry", tag=TAG,
           response=RegistryOut)
def get_registry(registry_id):
    return registry_out(_registry(registry_id, "view"), current_user)


@operation("PATCH", "/registries/<int:registry_id>",
           summary="Change a registry; username null removes the credentials", tag=TAG,
           body=RegistryUpdate, response=RegistryOut)
def update_registry(registry_id, data):
    registry = _registry(registry_id)
    given = data.model_fields_set
    registries.update(
        _actor(), registry, name=data.name, url=data.url,
        username=data.username if "username" in given else UNCHANGED,
        password=data.password if "password" in given else UNCHANGED,
    )
    return registry_out(registry, current_user)


@operation("DELETE", "/registries/<int:registry_id>",
           summary="Delete a registry (Docker Hub, the default, stays)", tag=TAG, status=204)
def delete_registry(registry_id):
    registries.delete(_actor(), _registry(registry_id))


@operation("GET", "/registries/<int:registry_id>/tags",
           summary="A repository's tags, filtered by a glob pattern (cached for 60 s)", tag=TAG,
           query=TagQuery, response=TagList)
def list_registry_tags(registry_id, params):
    registry = _registry(registry_id)
    tags = registries.list_tags(registry, params.repository, params.pattern)
    return {"registry": registry.name, "repository": params.repository,
            "pattern": params.pattern or None, "tags": tags}
