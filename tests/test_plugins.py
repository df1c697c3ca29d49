"""Plugins: admin CRUD through /api/v1/plugins, JSON Schema checks on their params, and the
prepull command every enabled node gets when a plugin's image is new or changes."""
import json

import pytest

from app.extensions import db
from app.models import AuditEntry, Environment, Node, NodeCommand, Plugin, Project, Registry
from app.models.pipelines import PipelineVersion
from app.models.registries import DOCKER_HUB_NAME, DOCKER_HUB_URL
from app.services import catalog, nodes, registries
from app.services.catalog import keyring
from app.services.plugins import PAYLOAD_CONTEXT

REGISTRY_PASSWORD = "registry-secret-PW-555"


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


@pytest.fixture
def registry(app, admin):
    return registries.create(admin, "private", "http://127.0.0.1:5000", "puller", REGISTRY_PASSWORD)


@pytest.fixture
def hub(app):
    hub = Registry(name=DOCKER_HUB_NAME, url=DOCKER_HUB_URL, is_default=True)
    db.session.add(hub)
    db.session.commit()
    return hub


@pytest.fixture
def fleet(app, admin):
    """Enabled nodes in two environments and a disabled one: {name: node id}."""
    staging = catalog.create(admin, Environment, "staging")
    production = catalog.create(admin, Environment, "production")
    made = {}
    for environment, name, host in ((staging, "node-1", "10.0.0.1"), (staging, "node-2", "10.0.0.2"),
                                     (production, "node-3", "10.0.0.3")):
        node, _token, _command = nodes.add(admin, environment, name, host)
        made[name] = node.id
    nodes.set_enabled(admin, db.session.get(Node, made["node-2"]), False)
    return made


@pytest.fixture
def body(registry):
    return {"name": "postgres-database", "registry_id": registry.id, "image": "nullops/postgres-database",
            "tag": "1.0", "description": "creates a database",
            "params_schema": {"type": "object", "properties": {"database": {"type": "string"}},
                              "required": ["database"]},
            "cpus": 0.25, "memory_mb": 128, "timeout_s": 120, "network": True}


def _counts():
    return tuple(db.session.scalar(db.select(db.func.count()).select_from(m))
                 for m in (Plugin, NodeCommand, AuditEntry))


def _prepulls():
    rows = db.session.scalars(db.select(NodeCommand).where(NodeCommand.kind == "prepull")
                              .order_by(NodeCommand.id)).all()
    return [(row.node_id, json.loads(keyring().decrypt(row.payload_ciphertext, PAYLOAD_CONTEXT)))
            for row in rows]


def test_admin_creates_reads_changes_and_deletes_a_plugin(client, headers, body):
    created = client.post("/api/v1/plugins", json=body, headers=headers)
    assert created.status_code == 201, created.text
    plugin = created.json
    assert {k: plugin[k] for k in body} == body
    assert client.get(f"/api/v1/plugins/{plugin['id']}", headers=headers).json == plugin
    assert client.get("/api/v1/plugins", headers=headers).json["total"] == 1
    changed = client.patch(f"/api/v1/plugins/{plugin['id']}", json={"timeout_s": 600, "network": False},
                           headers=headers)
    assert changed.status_code == 200 and (changed.json["timeout_s"], changed.json["network"]) == (600, False)
    assert client.delete(f"/api/v1/plugins/{plugin['id']}", headers=headers).status_code == 204
    assert db.session.get(Plugin, plugin["id"]) is None
    actions = [e.action for e in db.session.scalars(
        db.select(AuditEntry).where(AuditEntry.target_type == "plugin").order_by(AuditEntry.id))]
    assert actions == ["plugin.create", "plugin.update", "plugin.delete"]


def test_defaults_follow_the_spec(client, headers, registry):
    response = client.post("/api/v1/plugins", headers=headers, json={
        "name": "hello", "registry_id": registry.id, "image": "team/hello", "tag": "v1"})
    assert response.status_code == 201, response.text
    plugin = response.json
    assert (plugin["timeout_s"], plugin["network"], plugin["params_schema"]) == (300, False, {})
    assert (plugin["cpus"], plugin["memory_mb"]) == (0.5, 256)


BAD = [
    ({"name": "Postgres DB"}, "name"),
    ({"registry_id": 424242}, "registry_id"),
    ({"image": "nullops/postgres-database:1.0"}, "image"),
    ({"image": "UPPER/case"}, "image"),
    ({"tag": "1.0 beta"}, "tag"),
    ({"tag": ".hidden"}, "tag"),
    ({"params_schema": []}, "params_schema"),
    ({"params_schema": {"type": "strin"}}, "params_schema"),
    ({"params_schema": {"properties": {"port": {"type": 5}}}}, "params_schema"),
    ({"params_schema": {"pattern": "("}}, "params_schema"),
    ({"cpus": 0.01}, "cpus"),
    ({"cpus": 65}, "cpus"),
    ({"cpus": "1"}, "cpus"),
    ({"memory_mb": 15}, "memory_mb"),
    ({"memory_mb": 262145}, "memory_mb"),
    ({"memory_mb": 64.5}, "memory_mb"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": 86401}, "timeout_s"),
    ({"network": "yes"}, "network"),
    ({"privileged": True}, "privileged"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f"{f}-{i}" for i, (_c, f) in enumerate(BAD)])
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(client, headers, body, fleet,
                                                                  change, field):
    before = _counts()
    response = client.post("/api/v1/plugins", json={**body, **change}, headers=headers)
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"], response.json
    assert _counts() == before
    plugin = client.post("/api/v1/plugins", json=body, headers=headers).json
    before = _counts()
    response = client.patch(f"/api/v1/plugins/{plugin['id']}", json=change, headers=headers)
    assert response.status_code == 422 and field in response.json["error"]["fields"], response.text
    assert _counts() == before


def test_a_missing_tag_is_refused(client, headers, body):
    response = client.post("/api/v1/plugins", json={k: v for k, v in body.items() if k != "tag"},
                           headers=headers)
    assert response.status_code == 422 and "tag" in response.json["error"]["fields"]


def test_a_bad_params_schema_is_named_by_its_path_and_message(client, headers, body):
    response = client.post("/api/v1/plugins", headers=headers, json={
        **body, "params_schema": {"type": "object", "properties": {"port": {"minimum": "one"}}}})
    assert response.status_code == 422
    hint = response.json["error"]["fields"]["params_schema"]
    assert "$.properties.port.minimum" in hint and "'one' is not of type 'number'" in hint


def test_a_new_plugin_is_pulled_on_every_enabled_node(client, headers, body, fleet):
    response = client.post("/api/v1/plugins", json=body, headers=headers)
    assert response.status_code == 201, response.text
    expected = [{"image": "127.0.0.1:5000/nullops/postgres-database:1.0",
                 "auth": {"username": "puller", "password": REGISTRY_PASSWORD}}]
    assert _prepulls() == [(fleet["node-1"], expected), (fleet["node-3"], expected)]
    entry = db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "plugin.create")).one()
    assert entry.details["prepull_nodes"] == 2
    assert REGISTRY_PASSWORD not in json.dumps(entry.details) and "puller" not in json.dumps(entry.details)
    audit = client.get("/api/v1/audit?per_page=100", headers=headers).text
    assert REGISTRY_PASSWORD not in audit


def test_public_images_are_pulled_by_their_short_name_without_credentials(client, headers, body, hub,
                                                                          fleet):
    client.post("/api/v1/plugins", json={**body, "registry_id": hub.id}, headers=headers)
    assert _prepulls()[0][1] == [{"image": "nullops/postgres-database:1.0"}]


def test_a_changed_image_is_pulled_again_other_changes_are_not(client, headers, body, hub, fleet):
    plugin = client.post("/api/v1/plugins", json=body, headers=headers).json
    url = f"/api/v1/plugins/{plugin['id']}"
    client.patch(url, json={"timeout_s": 60, "cpus": 1, "params_schema": {}}, headers=headers)
    assert len(_prepulls()) == 2
    client.patch(url, json={"tag": "1.1"}, headers=headers)
    client.patch(url, json={"registry_id": hub.id, "image": "team/pg-db"}, headers=headers)
    images = [payload[0]["image"] for _node, payload in _prepulls()]
    assert images == ["127.0.0.1:5000/nullops/postgres-database:1.0"] * 2 + [
        "127.0.0.1:5000/nullops/postgres-database:1.1"] * 2 + ["team/pg-db:1.1"] * 2
    update = db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "plugin.update")
                                .order_by(AuditEntry.id)).all()
    assert update[0].details == {"cpus": [0.25, 1.0], "timeout_s": [120, 60], "params_schema": "changed"}
    assert update[1].details == {"tag": ["1.0", "1.1"], "prepull_nodes": 2}


def test_changing_a_plugin_leaves_saved_pipeline_versions_alone(client, headers, body):
    plugin = client.post("/api/v1/plugins", json=body, headers=headers).json
    project = Project(name="shop")
    db.session.add(project)
    db.session.flush()
    resolved = {"steps": [{"id": "mkdb", "kind": "plugin", "plugin": plugin["name"],
                           "registry_id": plugin["registry_id"], "image": plugin["image"],
                           "tag": plugin["tag"], "params": {"database": "shop"}, "cpus": plugin["cpus"],
                           "memory_mb": plugin["memory_mb"], "timeout_s": plugin["timeout_s"],
                           "network": plugin["network"], "depends_on": []}]}
    version = PipelineVersion(project_id=project.id, number=1, definition={"nodes": []}, resolved=resolved)
    db.session.add(version)
    db.session.commit()
    response = client.patch(f"/api/v1/plugins/{plugin['id']}", headers=headers, json={
        "tag": "2.0", "image": "nullops/pg", "cpus": 2, "memory_mb": 1024, "timeout_s": 30})
    assert response.status_code == 200
    db.session.expire_all()
    assert db.session.get(PipelineVersion, version.id).resolved == resolved


def test_users_read_plugins_but_cannot_change_them(client, headers, body, make_user, bearer):
    plugin = client.post("/api/v1/plugins", json=body, headers=headers).json
    user = bearer(make_user("carol"))
    assert client.get("/api/v1/plugins", headers=user).json["items"] == [plugin]
    assert client.delete(f"/api/v1/plugins/{plugin['id']}", headers=user).status_code == 403
    assert db.session.get(Plugin, plugin["id"]) is not None


def test_a_plugin_may_ask_to_be_run_again_on_rollback(app, admin):
    """postgres-database drops what it made when the deployment is rolled back or deleted."""
    from app.models import Registry
    from app.models.registries import DOCKER_HUB_NAME, DOCKER_HUB_URL
    from app.services import plugins

    hub = Registry(name=DOCKER_HUB_NAME, url=DOCKER_HUB_URL, is_default=True)
    db.session.add(hub)
    db.session.commit()
    plugin = plugins.create(admin, "mkdb", hub.id, "nullops/postgres-database", "1.0", rollback=True)
    assert plugin.rollback is True
    assert plugins.update(admin, plugin, rollback=False).rollback is False
