"""Plugins: every user reads them (pipelines show them); admins create, change, delete. A new
image is pulled on every enabled node ahead of any run."""
from flask_login import current_user

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import Page, Pagination
from app.api.schemas.catalog_items import PluginCreate, PluginOut, PluginUpdate
from app.models import Plugin
from app.services import plugins

TAG = "plugins"


def _actor():
    return current_user._get_current_object()


def _plugin(plugin_id, action="manage"):
    plugin = access.get_visible(current_user, Plugin, plugin_id, "plugin")
    access.require(current_user, action, plugin)
    return plugin


@operation("GET", "/plugins", summary="Plugins (everyone may read them)", tag=TAG,
           query=Pagination, response=Page[PluginOut])
def list_plugins(params):
    return paginate(access.visible(current_user, Plugin).order_by(Plugin.name), params, PluginOut)


@operation("POST", "/plugins", summary="Add a plugin; every enabled node pulls its image", tag=TAG,
           body=PluginCreate, response=PluginOut, status=201)
def create_plugin(data):
    access.require(current_user, "create", Plugin)
    fields = data.model_dump(exclude={"name", "registry_id", "image", "tag"})
    plugin = plugins.create(_actor(), data.name, data.registry_id, data.image, data.tag, **fields)
    return dump(PluginOut, plugin)


@operation("GET", "/plugins/<int:plugin_id>", summary="One plugin", tag=TAG, response=PluginOut)
def get_plugin(plugin_id):
    return dump(PluginOut, _plugin(plugin_id, "view"))


@operation("PATCH", "/plugins/<int:plugin_id>",
           summary="Change a plugin (pipeline versions keep the image they pinned)", tag=TAG,
           body=PluginUpdate, response=PluginOut)
def update_plugin(plugin_id, data):
    plugin = _plugin(plugin_id)
    changes = {key: getattr(data, key) for key in data.model_fields_set}
    return dump(PluginOut, plugins.update(_actor(), plugin, **changes))


@operation("DELETE", "/plugins/<int:plugin_id>", summary="Delete a plugin", tag=TAG, status=204)
def delete_plugin(plugin_id):
    plugins.delete(_actor(), _plugin(plugin_id))
