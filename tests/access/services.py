"""Matrix rows for services and plugins (see tests/access/__init__.py): everyone logged in
reads them, only admins change them."""
from app.services import plugins, registries, service_catalog

EVERYONE = {"anonymous": 401, "outsider": 200, "reader": 200, "writer": 200, "admin": 200}


def _admin_only(status):
    return {"anonymous": 401, "outsider": 403, "reader": 403, "writer": 403, "admin": status}


SERVICE = "/api/v1/services/{service}"
PLUGIN = "/api/v1/plugins/{plugin}"
ROWS = {
    ("GET", "/api/v1/services"): ("/api/v1/services", None, EVERYONE),
    ("POST", "/api/v1/services"): (
        "/api/v1/services",
        {"name": "api", "registry_id": "{catalog_registry}", "image": "team/api", "tag": "1.0"},
        _admin_only(201)),
    ("GET", "/api/v1/services/<int:service_id>"): (SERVICE, None, EVERYONE),
    ("PATCH", "/api/v1/services/<int:service_id>"): (SERVICE, {"tag": "1.1"}, _admin_only(200)),
    ("DELETE", "/api/v1/services/<int:service_id>"): (SERVICE, None, _admin_only(204)),
    ("GET", "/api/v1/plugins"): ("/api/v1/plugins", None, EVERYONE),
    ("POST", "/api/v1/plugins"): (
        "/api/v1/plugins",
        {"name": "mkdb", "registry_id": "{catalog_registry}", "image": "team/mkdb", "tag": "1.0"},
        _admin_only(201)),
    ("GET", "/api/v1/plugins/<int:plugin_id>"): (PLUGIN, None, EVERYONE),
    ("PATCH", "/api/v1/plugins/<int:plugin_id>"): (PLUGIN, {"timeout_s": 60}, _admin_only(200)),
    ("DELETE", "/api/v1/plugins/<int:plugin_id>"): (PLUGIN, None, _admin_only(204)),
}


def make_ids(ex, ids):
    # A registry of their own: the matrix deletes its "registry" and must not find it in use.
    registry = registries.create(ex["admin"], "catalog-registry", "https://registry.example.com")
    service = service_catalog.create(ex["admin"], "web", registry.id, "team/web", tag="2.0",
                                     ports=[8000], exposed_ports=[8000])
    plugin = plugins.create(ex["admin"], "seed", registry.id, "team/seed", "1.0")
    return {"catalog_registry": registry.id, "service": service.id, "plugin": plugin.id}
