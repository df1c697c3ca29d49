"""Services: every user reads them (deploy forms show them); admins create, change, delete."""
from flask_login import current_user

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import Page, Pagination
from app.api.schemas.catalog_items import ServiceCreate, ServiceOut, ServiceUpdate
from app.models import Service
from app.services import service_catalog

TAG = "services"


def _actor():
    return current_user._get_current_object()


def _service(service_id, action="manage"):
    service = access.get_visible(current_user, Service, service_id, "service")
    access.require(current_user, action, service)
    return service


@operation("GET", "/services", summary="Services (everyone may read them)", tag=TAG,
           query=Pagination, response=Page[ServiceOut])
def list_services(params):
    return paginate(access.visible(current_user, Service).order_by(Service.name), params, ServiceOut)


@operation("POST", "/services", summary="Add a service: an image and how it runs", tag=TAG,
           body=ServiceCreate, response=ServiceOut, status=201)
def create_service(data):
    access.require(current_user, "create", Service)
    fields = data.model_dump(exclude={"name", "registry_id", "image"})
    service = service_catalog.create(_actor(), data.name, data.registry_id, data.image, **fields)
    return dump(ServiceOut, service)


@operation("GET", "/services/<int:service_id>", summary="One service", tag=TAG, response=ServiceOut)
def get_service(service_id):
    return dump(ServiceOut, _service(service_id, "view"))


@operation("PATCH", "/services/<int:service_id>",
           summary="Change a service (pipeline versions saved before keep their copy)", tag=TAG,
           body=ServiceUpdate, response=ServiceOut)
def update_service(service_id, data):
    service = _service(service_id)
    changes = {key: getattr(data, key) for key in data.model_fields_set}
    return dump(ServiceOut, service_catalog.update(_actor(), service, **changes))


@operation("DELETE", "/services/<int:service_id>", summary="Delete a service", tag=TAG, status=204)
def delete_service(service_id):
    service_catalog.delete(_actor(), _service(service_id))
