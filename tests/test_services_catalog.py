"""Services: admins describe images and how they run through /api/v1/services; every bad field
is refused by name and leaves nothing behind; registries in use cannot be deleted."""
import pytest

from app.extensions import db
from app.models import AuditEntry, Project, Service
from app.models.pipelines import PipelineVersion
from app.services import plugins, registries, service_catalog
from app.services.errors import ValidationFailed


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


@pytest.fixture
def registry(app, admin):
    return registries.create(admin, "private", "http://127.0.0.1:5000", "puller", "registry-pw-1")


@pytest.fixture
def body(registry):
    return {"name": "web", "registry_id": registry.id, "image": "team/shop-web", "tag": "1.4",
            "ports": [8000, 9000], "exposed_ports": [8000],
            "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}", "MODE": "qa"},
            "command": ["gunicorn", "app:app"],
            "health_check": {"type": "http", "port": 8000, "path": "/health"}}


def _counts():
    return tuple(db.session.scalar(db.select(db.func.count()).select_from(m)) for m in (Service, AuditEntry))


def _audit(action):
    return db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)).all()


def test_admin_creates_reads_changes_and_deletes_a_service(client, headers, body, registry):
    created = client.post("/api/v1/services", json=body, headers=headers)
    assert created.status_code == 201, created.text
    service = created.json
    assert {k: service[k] for k in body} == body
    assert service["tag_mode"] == "pinned" and service["tag_pattern"] is None
    assert client.get(f"/api/v1/services/{service['id']}", headers=headers).json == service
    listed = client.get("/api/v1/services", headers=headers).json
    assert listed["total"] == 1 and listed["items"][0]["name"] == "web"

    changed = client.patch(f"/api/v1/services/{service['id']}", headers=headers,
                           json={"tag": "1.5", "env": {"MODE": "demo"}, "command": None})
    assert changed.status_code == 200, changed.text
    assert changed.json["tag"] == "1.5" and changed.json["env"] == {"MODE": "demo"}
    assert changed.json["command"] is None
    assert changed.json["ports"] == [8000, 9000]  # left out: kept

    assert client.delete(f"/api/v1/services/{service['id']}", headers=headers).status_code == 204
    assert db.session.get(Service, service["id"]) is None
    entries = _audit("service.create") + _audit("service.update") + _audit("service.delete")
    assert [e.action for e in entries] == ["service.create", "service.update", "service.delete"]
    assert entries[0].details["env"] == ["DATABASE_URL", "MODE"]  # names, not values
    assert entries[1].details == {"tag": ["1.4", "1.5"], "env": ["DATABASE_URL", "MODE"],
                                  "command": [["gunicorn", "app:app"], None]}
    assert "registry-pw-1" not in str([e.details for e in entries])


def test_a_selectable_service_offers_tags_by_pattern(client, headers, registry):
    response = client.post("/api/v1/services", headers=headers, json={
        "name": "api", "registry_id": registry.id, "image": "team/api", "tag_mode": "selectable",
        "tag_pattern": "features-*"})
    assert response.status_code == 201, response.text
    assert (response.json["tag"], response.json["tag_pattern"]) == (None, "features-*")
    every_tag = client.post("/api/v1/services", headers=headers, json={
        "name": "worker", "registry_id": registry.id, "image": "team/worker", "tag_mode": "selectable"})
    assert every_tag.status_code == 201 and every_tag.json["tag_pattern"] is None


def test_switching_tag_mode_drops_the_other_modes_setting(client, headers, body):
    service = client.post("/api/v1/services", json=body, headers=headers).json
    url = f"/api/v1/services/{service['id']}"
    selectable = client.patch(url, json={"tag_mode": "selectable", "tag_pattern": "v*"}, headers=headers)
    assert selectable.status_code == 200, selectable.text
    assert (selectable.json["tag"], selectable.json["tag_pattern"]) == (None, "v*")
    # Back to pinned needs a tag; the pattern goes with the mode.
    refused = client.patch(url, json={"tag_mode": "pinned"}, headers=headers)
    assert refused.status_code == 422 and set(refused.json["error"]["fields"]) == {"tag"}
    pinned = client.patch(url, json={"tag_mode": "pinned", "tag": "2.0"}, headers=headers)
    assert (pinned.json["tag"], pinned.json["tag_pattern"]) == ("2.0", None)


BAD = [
    ({"name": "Web"}, "name"),
    ({"name": "-web"}, "name"),
    ({"name": "w" * 64}, "name"),
    ({"description": "d" * 501}, "description"),
    ({"registry_id": 999999}, "registry_id"),
    ({"registry_id": "1"}, "registry_id"),
    ({"registry_id": 2 ** 64}, "registry_id"),
    ({"image": "Team/App"}, "image"),
    ({"image": "team/app:1.4"}, "image"),
    ({"image": "team//app"}, "image"),
    ({"tag_mode": "latest"}, "tag_mode"),
    ({"tag": None}, "tag"),
    ({"tag": "-1.4"}, "tag"),
    ({"tag": "1.4;rm"}, "tag"),
    ({"tag": "t" * 129}, "tag"),
    ({"tag_pattern": "v*"}, "tag_pattern"),
    ({"tag_mode": "selectable"}, "tag"),
    ({"tag_mode": "selectable", "tag": None, "tag_pattern": "features/*"}, "tag_pattern"),
    ({"ports": [0]}, "ports"),
    ({"ports": [65536]}, "ports"),
    ({"ports": [8000, 8000]}, "ports"),
    ({"ports": list(range(1000, 1033)), "exposed_ports": [], "health_check": None}, "ports"),
    ({"ports": ["8000"]}, "ports.0"),
    ({"exposed_ports": [7000]}, "exposed_ports"),
    ({"env": {"1ST": "x"}}, "env"),
    ({"env": {"A-B": "x"}}, "env"),
    ({"env": {"BIG": "x" * 4097}}, "env"),
    ({"env": {"NUL": "a\0b"}}, "env"),
    ({"env": {"NUMBER": 1}}, "env.NUMBER"),
    ({"command": "gunicorn app:app"}, "command"),
    ({"command": ["ok", "a" * 4097]}, "command"),
    ({"health_check": {"type": "grpc", "port": 8000}}, "health_check"),
    ({"health_check": {"type": []}}, "health_check"),
    ({"health_check": {"type": "tcp"}}, "health_check"),
    ({"health_check": {"type": "http", "port": 7000}}, "health_check"),
    ({"health_check": {"type": "http", "port": 8000, "path": "health"}}, "health_check"),
    ({"health_check": {"type": "http", "port": 8000, "privileged": True}}, "health_check"),
    ({"health_check": {"type": "log", "pattern": "("}}, "health_check"),
    ({"health_check": {"type": "exec", "command": "pg_isready"}}, "health_check"),
    ({"health_check": {"type": "tcp", "port": 8000, "timeout_s": 0}}, "health_check"),
    ({"health_check": "http"}, "health_check"),
    ({"volumes": ["/:/host"]}, "volumes"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f"{f}-{i}" for i, (_c, f) in enumerate(BAD)])
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(client, headers, body, change, field):
    before = _counts()
    response = client.post("/api/v1/services", json={**body, **change}, headers=headers)
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"], response.json
    assert field.split(".")[0] in response.json["error"]["message"]
    assert _counts() == before


# A change to selectable alone is fine: it drops the pinned tag (see above).
@pytest.mark.parametrize("change,field", [c for c in BAD if c[0] != {"tag_mode": "selectable"}])
def test_a_bad_change_is_refused_and_leaves_the_service_as_it_was(client, headers, body, change, field):
    service = client.post("/api/v1/services", json=body, headers=headers).json
    before = _counts()
    response = client.patch(f"/api/v1/services/{service['id']}", json=change, headers=headers)
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"]
    assert _counts() == before
    db.session.expire_all()
    assert client.get(f"/api/v1/services/{service['id']}", headers=headers).json == service


def test_null_is_refused_for_fields_that_cannot_be_empty(client, headers, body):
    service = client.post("/api/v1/services", json=body, headers=headers).json
    for field in ("name", "registry_id", "image", "tag_mode", "ports", "exposed_ports", "env"):
        response = client.patch(f"/api/v1/services/{service['id']}", json={field: None}, headers=headers)
        assert response.status_code == 422 and field in response.json["error"]["fields"], field
    cleared = client.patch(f"/api/v1/services/{service['id']}", json={"health_check": None},
                           headers=headers)
    assert cleared.status_code == 200 and cleared.json["health_check"] is None


def test_the_service_layer_names_every_bad_field_at_once(admin, registry):
    # The UI and the CLI call it without the API's schema.
    with pytest.raises(ValidationFailed) as caught:
        service_catalog.create(admin, "Bad Name", registry.id, "team/app:1", tag=None,
                               ports=[8000], exposed_ports=[8000, 9000], env={"A": 5},
                               health_check={"type": "http", "port": 7000})
    assert set(caught.value.fields) == {"name", "image", "tag", "exposed_ports", "env", "health_check"}
    assert db.session.scalar(db.select(db.func.count()).select_from(Service)) == 0


def test_shell_metacharacters_are_stored_as_plain_data(client, headers, body):
    odd = {"env": {"CMD": "$(rm -rf /); `id` | tee x\nnext", "DASH": "-rf",
                   "SECRET": "${secrets.DB_PASSWORD}"},
           "command": ["-c", "echo $(id); ls | wc -l", "`reboot`"],
           "description": "a; b | c $(d)"}
    response = client.post("/api/v1/services", json={**body, **odd}, headers=headers)
    assert response.status_code == 201, response.text
    stored = db.session.get(Service, response.json["id"])
    assert (stored.env, stored.command) == (odd["env"], odd["command"])
    assert stored.description == odd["description"]


def test_duplicate_names_are_a_conflict_and_write_nothing(client, headers, body):
    assert client.post("/api/v1/services", json=body, headers=headers).status_code == 201
    before = _counts()
    again = client.post("/api/v1/services", json={**body, "image": "team/other"}, headers=headers)
    assert again.status_code == 409 and again.json["error"]["fields"] == {"name": "already taken"}
    assert _counts() == before


def test_changing_a_service_leaves_saved_pipeline_versions_alone(client, headers, body, admin):
    service = client.post("/api/v1/services", json=body, headers=headers).json
    project = Project(name="shop")
    db.session.add(project)
    db.session.flush()
    copy = {key: service[key] for key in ("registry_id", "image", "tag_mode", "tag", "ports", "env")}
    resolved = {"steps": [{"id": "web", "kind": "service", "service": "web", **copy}]}
    version = PipelineVersion(project_id=project.id, number=1, definition={}, resolved=resolved)
    db.session.add(version)
    db.session.commit()
    assert client.patch(f"/api/v1/services/{service['id']}", json={"tag": "9.9", "ports": [80],
                                                                    "exposed_ports": [80],
                                                                    "health_check": None},
                        headers=headers).status_code == 200
    db.session.expire_all()
    assert db.session.get(PipelineVersion, version.id).resolved == resolved


def test_a_registry_in_use_cannot_be_deleted(client, headers, body, registry, admin):
    client.post("/api/v1/services", json=body, headers=headers)
    plugins.create(admin, "mkdb", registry.id, "team/mkdb", "1.0")
    refused = client.delete(f"/api/v1/registries/{registry.id}", headers=headers)
    assert refused.status_code == 409
    assert "services web" in refused.json["error"]["message"]
    assert "plugins mkdb" in refused.json["error"]["message"]
    assert refused.json["error"]["fields"] == {"registry": "used by services web; plugins mkdb"}
    assert _audit("registry.delete") == []
    service_id = db.session.scalar(db.select(Service.id))
    client.delete(f"/api/v1/services/{service_id}", headers=headers)
    plugin_id = client.get("/api/v1/plugins", headers=headers).json["items"][0]["id"]
    client.delete(f"/api/v1/plugins/{plugin_id}", headers=headers)
    assert client.delete(f"/api/v1/registries/{registry.id}", headers=headers).status_code == 204


def test_users_read_services_but_cannot_change_them(client, headers, body, make_user, bearer):
    service = client.post("/api/v1/services", json=body, headers=headers).json
    user = bearer(make_user("carol"))
    assert client.get(f"/api/v1/services/{service['id']}", headers=user).json == service
    assert client.patch(f"/api/v1/services/{service['id']}", json={"tag": "6.6"},
                        headers=user).status_code == 403
    assert client.get(f"/api/v1/services/{service['id']}", headers=headers).json["tag"] == "1.4"
