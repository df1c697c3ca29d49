"""Pipeline versions through /api/v1: save, list, read, diff, YAML export and import, and who may
do which."""
import pytest
import yaml
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, PipelineVersion
from app.services import catalog, pipelines
from tests.access.pipelines import definition, make_catalog
from tests.conftest import csrf_from


@pytest.fixture
def shop(spec_example):
    make_catalog()
    catalog.put_secret(spec_example["admin"], spec_example["project"], "DB_PASSWORD", "pw-123")
    return spec_example["project"]


@pytest.fixture
def headers(spec_example, bearer):
    return bearer(spec_example["admin"])


def url(project, rest=""):
    return f"/api/v1/projects/{project.id}/pipeline{rest}"


def _count():
    return db.session.scalar(select(func.count()).select_from(PipelineVersion))


def save(client, headers, project, d=None, comment=""):
    response = client.post(url(project, "/versions"), headers=headers,
                           json={"definition": d or definition(), "comment": comment})
    assert response.status_code == 201, response.text
    return response.json


def test_an_admin_saves_versions_and_everyone_on_the_project_reads_them(client, headers, shop, spec_example,
                                                                        bearer):
    first = save(client, headers, shop, comment="first")
    assert first["number"] == 1 and first["comment"] == "first"
    assert first["created_by"] == {"id": spec_example["admin"].id, "username": "admin"}
    assert first["definition"] == definition() and first["resolved"]["steps"][1]["tag"] == "1.0"
    save(client, headers, shop, comment="second")
    reader = bearer(spec_example["reader"])
    listed = client.get(url(shop, "/versions?per_page=1"), headers=reader).json
    assert listed["total"] == 2 and [v["number"] for v in listed["items"]] == [2]
    assert "definition" not in listed["items"][0]
    one = client.get(url(shop, "/versions/1"), headers=reader).json
    assert one["definition"] == definition() and one["resolved"] == first["resolved"]
    assert one["created_at"] == first["created_at"]
    assert client.get(url(shop, "/export"), headers=reader).status_code == 200
    assert client.get(url(shop, "/versions/2/diff"), headers=reader).status_code == 200


def test_only_admins_save_or_import(client, headers, shop, spec_example, bearer):
    for role in ("reader", "writer"):
        who = bearer(spec_example[role])
        response = client.post(url(shop, "/versions"), headers=who, json={"definition": definition()})
        assert response.status_code == 403 and "ask an admin" in response.json["error"]["message"]
        response = client.post(url(shop, "/import"), headers=who, data=yaml.safe_dump(definition()),
                               content_type="application/yaml")
        assert response.status_code == 403
    outsider = bearer(spec_example["outsider"])
    assert client.get(url(shop, "/versions"), headers=outsider).status_code == 404
    assert client.post(url(shop, "/versions"), headers=outsider,
                       json={"definition": definition()}).status_code == 404
    assert _count() == 0


def test_a_bad_definition_is_a_422_naming_the_node_and_writes_nothing(client, headers, shop):
    d = definition()
    d["nodes"][1]["plugin"] = "postgres-db"
    d["nodes"][2]["env"]["X"] = "${secrets.NOPE}"
    response = client.post(url(shop, "/versions"), headers=headers, json={"definition": d})
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_failed"
    assert "no plugin named 'postgres-db'" in error["fields"]["nodes.mkdb.plugin"]
    assert _count() == 0
    assert db.session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "pipeline.save")) == 0


@pytest.mark.parametrize("body,field", [
    ({"definition": [1]}, "definition"),
    ({"definition": definition(), "comment": "x" * 501}, "comment"),
    ({"definition": definition(), "author": "me"}, "author"),
    ({}, "definition"),
])
def test_a_malformed_request_is_refused_by_its_schema(client, headers, shop, body, field):
    response = client.post(url(shop, "/versions"), headers=headers, json=body)
    assert response.status_code == 422 and field in response.json["error"]["fields"]


def test_unknown_versions_and_projects_are_404(client, headers, shop):
    assert client.get(url(shop, "/versions/1"), headers=headers).status_code == 404
    response = client.get(url(shop, "/export"), headers=headers)
    assert response.status_code == 404 and "no pipeline version yet" in response.json["error"]["message"]
    save(client, headers, shop)
    assert client.get(url(shop, "/versions/1/diff?against=7"), headers=headers).status_code == 404
    assert client.get(url(shop, "/export?version=2"), headers=headers).status_code == 404
    assert client.get("/api/v1/projects/999/pipeline/versions", headers=headers).status_code == 404
    assert client.get(url(shop, "/export?version=0"), headers=headers).status_code == 422


def test_diff_defaults_to_the_previous_version(client, headers, shop):
    save(client, headers, shop)
    d = definition()
    d["nodes"][0]["env"]["POSTGRES_PASSWORD"] = "plain"
    save(client, headers, shop, d)
    save(client, headers, shop, definition())
    diff = client.get(url(shop, "/versions/3/diff"), headers=headers).json
    assert diff["against"] == 2
    assert diff["nodes"]["changed"][0]["definition"] == [
        {"field": "env.POSTGRES_PASSWORD", "before": "plain", "after": "${secrets.DB_PASSWORD}"}]
    assert client.get(url(shop, "/versions/3/diff?against=1"), headers=headers).json["nodes"]["changed"] == []
    first = client.get(url(shop, "/versions/1/diff"), headers=headers).json
    assert first["against"] is None and first["edges"]["added"] == [{"from": "db", "to": "mkdb"},
                                                                     {"from": "mkdb", "to": "web"}]


def test_export_then_import_through_the_api(client, headers, shop):
    save(client, headers, shop, comment="first")
    d = definition()
    d["nodes"][2]["env"]["GREETING"] = "hello\nworld"
    save(client, headers, shop, d, comment="second")
    exported = client.get(url(shop, "/export?version=2"), headers=headers)
    assert exported.status_code == 200 and exported.mimetype == "application/yaml"
    assert 'filename="shop-pipeline-v2.yaml"' in exported.headers["Content-Disposition"]
    latest = client.get(url(shop, "/export"), headers=headers).text
    assert latest == exported.text and "version 2" in latest
    text = exported.text + "comment: back from git\n"
    response = client.post(url(shop, "/import"), headers=headers, data=text.encode(),
                           content_type="application/yaml")
    assert response.status_code == 201, response.text
    assert response.json["number"] == 3 and response.json["comment"] == "back from git"
    assert response.json["definition"] == d
    plain = client.post(url(shop, "/import"), headers=headers, data=exported.text,
                        content_type="text/plain; charset=utf-8")
    assert plain.status_code == 201 and plain.json["number"] == 4


def test_import_refuses_malformed_yaml_with_the_line(client, headers, shop):
    response = client.post(url(shop, "/import"), headers=headers, content_type="application/yaml",
                           data="nodes:\n- id: db\n  service: postgres\n  env: {A: [1}\n")
    assert response.status_code == 422
    assert "line 4" in response.json["error"]["message"]
    assert "body" in response.json["error"]["fields"]
    assert _count() == 0


def test_import_refuses_other_content_types_and_large_bodies(client, headers, shop):
    response = client.post(url(shop, "/import"), headers=headers, data={"nodes": "x"})
    assert response.status_code == 415
    assert "application/yaml" in response.json["error"]["message"]
    big = b"# padding\n" * (27 * 1024)
    response = client.post(url(shop, "/import"), headers=headers, data=big,
                           content_type="application/yaml")
    assert response.status_code == 413 and response.json["error"]["code"] == "too_large"
    assert _count() == 0


def test_import_from_a_browser_session_needs_the_csrf_token(client, shop, login):
    login("admin")
    text = yaml.safe_dump(definition())
    refused = client.post(url(shop, "/import"), data=text, content_type="application/yaml")
    assert refused.status_code == 400 and refused.json["error"]["code"] == "csrf_failed"
    token = csrf_from(client.get("/").text)
    response = client.post(url(shop, "/import"), data=text, content_type="application/yaml",
                           headers={"X-CSRFToken": token})
    assert response.status_code == 201, response.text
    assert pipelines.latest_version(shop).definition == definition()


def test_the_export_route_is_in_the_openapi_document(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert "get" in paths["/api/v1/projects/{project_id}/pipeline/export"]
    assert "post" in paths["/api/v1/projects/{project_id}/pipeline/import"]


# --- the visual editor's data --------------------------------------------------------------------
def test_the_editor_data_gives_admins_the_catalog_secret_names_and_saving(client, headers, shop):
    data = client.get(url(shop, "/editor"), headers=headers).json
    assert data["can_manage"] is True and data["latest"] is None and data["project_id"] == shop.id
    assert [s["name"] for s in data["services"]] == ["postgres", "shop-web"]
    web = data["services"][1]
    assert web["ports"] == [8000] and web["exposed_ports"] == [8000]
    assert web["health_check"] == {"type": "http", "port": 8000, "path": "/health"}
    assert web["env"] == {"LOG_LEVEL": "info"} and web["tag_mode"] == "selectable"
    [plugin] = data["plugins"]
    assert plugin["name"] == "postgres-database" and plugin["params_schema"]["required"] == ["host"]
    assert data["secrets"] == ["DB_PASSWORD"]
    assert data["service_attributes"] == ["host", "port", "url"]
    save(client, headers, shop)
    assert client.get(url(shop, "/editor"), headers=headers).json["latest"] == 1


def test_viewers_get_the_editor_catalog_without_secret_names_or_saving(client, shop, spec_example,
                                                                        bearer):
    for role in ("reader", "writer"):
        data = client.get(url(shop, "/editor"), headers=bearer(spec_example[role])).json
        assert data["can_manage"] is False and data["secrets"] == []
        assert [p["name"] for p in data["plugins"]] == ["postgres-database"]
    outsider = bearer(spec_example["outsider"])
    assert client.get(url(shop, "/editor"), headers=outsider).status_code == 404
    assert client.get(url(shop, "/editor")).status_code == 401
