"""Catalog pages through the test client: registries, services, plugins and a project's pipeline.
Admins change them through the forms; bad input is shown next to the form naming the field and
writes nothing; everyone else gets 403 on every change and sees no button for one."""
import html
import json
import re

import pytest
import yaml
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, PipelineVersion, Plugin, Registry, Service
from app.services import catalog, pipelines, registries, service_catalog
from app.services.registries import RegistryUnreachable
from app.ui import catalog as catalog_pages
from tests.access.deployments import registry as make_registry
from tests.access.pipelines import PARAMS_SCHEMA, definition, docker_hub, make_catalog
from tests.conftest import csrf_from, rows_of


def _post(client, action, page="/services", **fields):
    """Submit a form the way the browser does: CSRF token taken from a page."""
    token = csrf_from(client.get(page).text)
    return client.post(action, data={"csrf_token": token, **fields})


def _flashes(text):
    return [(kind, html.unescape(message))
            for kind, message in re.findall(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', text)]


def _field_errors(text):
    return {name: html.unescape(hint) for name, hint in
            re.findall(r'class="field-error" data-field="(\w+)">([^<]*)<', text)}


def _count(model):
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def _counts():
    return rows_of(Registry, Service, Plugin, PipelineVersion, AuditEntry)


def _buttons(text):
    """The page's submit buttons but the navigation's Log out."""
    return [b for b in re.findall(r'<button type="submit"[^>]*>([^<]+)</button>', text) if b != "Log out"]


SERVICE_FORM = {
    "name": "shop-web", "description": "the shop", "image": "team/shop-web", "tag_mode": "pinned",
    "tag": "1.4", "tag_pattern": "ignored-*", "ports": "8000, 9000", "exposed_ports": "8000",
    "env": "LOG_LEVEL=info\r\nGREETING= hello; $(rm -rf /)\r\n\r\n",
    "command": "gunicorn\r\n--bind\r\n0.0.0.0:8000\r\n",
    "health_check": '{"type": "http", "port": 8000, "path": "/health"}',
}
PLUGIN_FORM = {
    "name": "mkdb", "description": "", "image": "nullops/postgres-database", "tag": "1.0",
    "params_schema": '{"type": "object"}', "cpus": "0.25", "memory_mb": "128", "timeout_s": "60",
    "network": "y",
}


@pytest.fixture
def as_admin(client, login, admin):
    login("admin")
    return client


# --- registries ---------------------------------------------------------------------------------
def test_admin_adds_edits_and_deletes_a_registry_through_the_forms(as_admin):
    created = _post(as_admin, "/registries", name="team", url="https://registry.example.com/",
                    username="robot", password="s3cret-pw")
    assert created.status_code == 302
    registry = db.session.scalar(select(Registry).where(Registry.name == "team"))
    assert (registry.url, registry.username) == ("https://registry.example.com", "robot")
    assert registries.reveal_password(registry) == "s3cret-pw"
    page = as_admin.get(created.headers["Location"])
    assert ("ok", "Registry team added.") in _flashes(page.text)
    assert "s3cret-pw" not in page.text and "robot" not in page.text  # write-only

    # Empty username and password: the credentials stay; only the name changes.
    ciphertext = registry.password_ciphertext
    _post(as_admin, f"/registries/{registry.id}", name="team-two", url=registry.url, username="",
          password="")
    db.session.expire_all()
    assert (registry.name, registry.username, registry.password_ciphertext) == (
        "team-two", "robot", ciphertext)

    _post(as_admin, f"/registries/{registry.id}", name="team-two", url=registry.url,
          clear_credentials="y")
    db.session.expire_all()
    assert (registry.username, registry.password_ciphertext) == (None, None)

    deleted = _post(as_admin, f"/registries/{registry.id}/delete")
    assert deleted.headers["Location"] == "/registries"
    assert _count(Registry) == 0
    assert ("ok", "Registry team-two deleted.") in _flashes(as_admin.get("/registries").text)


def test_bad_registry_input_is_shown_by_field_and_writes_nothing(as_admin):
    before = _counts()
    refused = _post(as_admin, "/registries", name="team", url="ftp://registry.example.com",
                    username="robot", password="")
    assert refused.status_code == 422
    assert "use http:// or https://" in _field_errors(refused.text)["url"]
    assert 'value="ftp://registry.example.com"' in refused.text  # the input stays
    assert _counts() == before

    registry = make_registry("team", username="robot", password="pw")
    before = _counts()
    both = _post(as_admin, f"/registries/{registry.id}", name="team", url=registry.url,
                 password="new-pw", clear_credentials="y")
    assert both.status_code == 422 and "clear_credentials" in _field_errors(both.text)
    assert _counts() == before
    db.session.expire_all()
    assert registries.reveal_password(registry) == "pw"


def test_deleting_a_registry_in_use_is_refused_with_a_flash(as_admin):
    registry = make_registry("team")
    service_catalog.create(None, "web", registry.id, "team/web", tag="1")
    response = _post(as_admin, f"/registries/{registry.id}/delete")
    assert response.headers["Location"] == f"/registries/{registry.id}"
    (kind, message), = _flashes(as_admin.get(response.headers["Location"]).text)
    assert kind == "error" and "is used by services web" in message
    assert _count(Registry) == 1


def test_registry_page_lists_tags_or_shows_the_registrys_error(as_admin, monkeypatch):
    registry = make_registry("team")
    asked = []

    def tags(reg, repository, pattern=None):
        asked.append((reg.name, repository, pattern))
        return ["v2", "v1"]

    monkeypatch.setattr(registries, "list_tags", tags)
    page = as_admin.get(f"/registries/{registry.id}?repository=team/app&pattern=v*")
    assert asked == [("team", "team/app", "v*")]
    assert re.findall(r"<li><code>([^<]+)</code></li>", page.text) == ["v2", "v1"]

    def down(*_args, **_kwargs):
        raise RegistryUnreachable("registry team is unreachable: connection refused")

    monkeypatch.setattr(registries, "list_tags", down)
    page = as_admin.get(f"/registries/{registry.id}?repository=team/app")
    assert page.status_code == 200
    assert "registry team is unreachable: connection refused" in page.text


# --- services -----------------------------------------------------------------------------------
def test_admin_adds_edits_and_deletes_a_service_through_the_form(as_admin):
    hub = docker_hub()
    db.session.commit()
    assert 'data-testid="form-error"' not in as_admin.get("/services/new").text
    created = _post(as_admin, "/services", registry_id=str(hub.id), **SERVICE_FORM)
    assert created.status_code == 302, _field_errors(created.text)
    service = db.session.scalar(select(Service))
    assert (service.tag, service.tag_pattern, service.ports, service.exposed_ports) == (
        "1.4", None, [8000, 9000], [8000])
    # Values are plain data, spaces and shell characters kept.
    assert service.env == {"LOG_LEVEL": "info", "GREETING": " hello; $(rm -rf /)"}
    assert service.command == ["gunicorn", "--bind", "0.0.0.0:8000"]
    assert service.health_check == {"type": "http", "port": 8000, "path": "/health"}

    page = as_admin.get(created.headers["Location"])
    assert "LOG_LEVEL=info\nGREETING= hello; $(rm -rf /)</textarea>" in html.unescape(page.text)
    assert _buttons(page.text) == ["Save service", "Delete service"]

    changed = _post(as_admin, f"/services/{service.id}", registry_id=str(hub.id), **{
        **SERVICE_FORM, "tag_mode": "selectable", "tag_pattern": "v*", "command": "", "env": ""})
    assert changed.status_code == 302
    db.session.expire_all()
    assert (service.tag_mode, service.tag, service.tag_pattern, service.command, service.env) == (
        "selectable", None, "v*", None, {})

    deleted = _post(as_admin, f"/services/{service.id}/delete")
    assert deleted.headers["Location"] == "/services" and _count(Service) == 0


def test_service_fields_that_cannot_be_read_or_are_refused_are_named_and_nothing_is_written(as_admin):
    hub = docker_hub()
    db.session.commit()
    before = _counts()
    unreadable = _post(as_admin, "/services", registry_id=str(hub.id), **{
        **SERVICE_FORM, "ports": "eighty", "env": "LOG_LEVEL", "health_check": "{"})
    assert unreadable.status_code == 422
    assert set(_field_errors(unreadable.text)) == {"ports", "env", "health_check"}
    assert "line 1: write NAME=value" in _field_errors(unreadable.text)["env"]

    refused = _post(as_admin, "/services", registry_id=str(hub.id), **{
        **SERVICE_FORM, "name": "Shop Web", "image": "team/shop-web:1.4", "tag": "",
        "exposed_ports": "7000"})
    assert refused.status_code == 422
    errors = _field_errors(refused.text)
    assert set(errors) == {"name", "image", "tag", "exposed_ports"}
    assert "give the repository only" in errors["image"]
    message = html.unescape(re.search(r'data-testid="form-error">([^<]+)<', refused.text).group(1))
    assert message.startswith("the service is invalid: name:")
    assert _counts() == before


def test_an_unchanged_edit_form_keeps_multiline_env_and_odd_arguments(as_admin):
    hub = docker_hub()
    service = service_catalog.create(None, "job", hub.id, "team/job", tag="1",
                                     env={"SCRIPT": "line one\nline two"}, command=["sh", "-c", ""])
    page = as_admin.get(f"/services/{service.id}").text
    fields = {name: html.unescape(value) for name, value in
              re.findall(r'<textarea[^>]*name="(\w+)"[^>]*>\s*([^<]*)</textarea>', page)}
    form = {name: html.unescape(value) for name, value in
            re.findall(r'<input[^>]*name="(\w+)"[^>]*type="text" value="([^"]*)"', page)}
    before = _counts()
    saved = _post(as_admin, f"/services/{service.id}", registry_id=str(hub.id), tag_mode="pinned",
                  **form, **fields)
    assert saved.status_code == 302, _field_errors(saved.text)
    db.session.expire_all()
    assert service.env == {"SCRIPT": "line one\nline two"} and service.command == ["sh", "-c", ""]
    assert _counts() == before  # no change, so no audit entry either


# --- plugins ------------------------------------------------------------------------------------
def test_admin_adds_edits_and_deletes_a_plugin_through_the_form(as_admin):
    hub = docker_hub()
    db.session.commit()
    created = _post(as_admin, "/plugins", registry_id=str(hub.id), **PLUGIN_FORM)
    assert created.status_code == 302, _field_errors(created.text)
    plugin = db.session.scalar(select(Plugin))
    assert (plugin.params_schema, plugin.cpus, plugin.memory_mb, plugin.timeout_s, plugin.network) == (
        {"type": "object"}, 0.25, 128, 60, True)

    form = {**PLUGIN_FORM, "params_schema": json.dumps(PARAMS_SCHEMA)}
    del form["network"]  # an unticked checkbox is not sent
    assert _post(as_admin, f"/plugins/{plugin.id}", registry_id=str(hub.id), **form).status_code == 302
    db.session.expire_all()
    assert plugin.params_schema == PARAMS_SCHEMA and plugin.network is False

    assert _post(as_admin, f"/plugins/{plugin.id}/delete").headers["Location"] == "/plugins"
    assert _count(Plugin) == 0


def test_bad_plugin_input_is_shown_by_field_and_writes_nothing(as_admin):
    hub = docker_hub()
    db.session.commit()
    before = _counts()
    refused = _post(as_admin, "/plugins", registry_id=str(hub.id), **{
        **PLUGIN_FORM, "cpus": "lots", "timeout_s": "0", "params_schema": '{"type": "nothing"}'})
    assert refused.status_code == 422
    errors = _field_errors(refused.text)
    assert set(errors) == {"cpus", "timeout_s", "params_schema"}
    assert "0.05 to 64" in errors["cpus"] and "not a valid JSON Schema" in errors["params_schema"]
    assert _counts() == before


# --- who may do what ----------------------------------------------------------------------------
def _catalog_rows(spec_example):
    rows = make_catalog()
    team = make_registry("team")
    return {"registry_id": team.id, "service_id": rows["db"].id, "plugin_id": rows["mkdb"].id,
            "project_id": spec_example["project"].id}


@pytest.mark.parametrize("who", ["se-bob", "qa-anna"])
def test_users_get_403_on_every_catalog_change_and_see_no_change_buttons(app, client, login,
                                                                         spec_example, who):
    ids = _catalog_rows(spec_example)
    login(who)
    before = _counts()
    posts = [rule for rule in app.url_map.iter_rules() if "POST" in rule.methods
             and app.view_functions[rule.endpoint].__module__ == catalog_pages.__name__]
    assert len(posts) == 10
    for rule in posts:
        path = re.sub(r"<int:(\w+)>", lambda m: str(ids[m.group(1)]), rule.rule)
        response = _post(client, path, name="x", url="http://x", yaml="nodes: []")
        assert response.status_code == 403, (path, response.status_code)
    assert _counts() == before

    for path in ("/registries", f"/registries/{ids['registry_id']}", "/services/new", "/plugins/new"):
        assert client.get(path).status_code == 403, path
    for path in ("/services", f"/services/{ids['service_id']}", "/plugins",
                 f"/plugins/{ids['plugin_id']}", f"/projects/{ids['project_id']}/pipeline"):
        page = client.get(path)
        assert page.status_code == 200 and _buttons(page.text) == [], path
        assert 'method="post"' not in page.text.replace(
            'method="post" action="/logout"', ""), path
    services = client.get("/services").text
    assert "postgres" in services and "Add service" not in services
    assert "Registries" not in services  # the admin links of the navigation


def test_outsiders_do_not_see_a_projects_pipeline(client, login, spec_example):
    login("nobody")
    assert client.get(f"/projects/{spec_example['project'].id}/pipeline").status_code == 404


# --- a project's pipeline -----------------------------------------------------------------------
@pytest.fixture
def shop(spec_example, admin):
    make_catalog()
    catalog.put_secret(admin, spec_example["project"], "DB_PASSWORD", "pw-123")
    return spec_example["project"]


def test_admin_imports_pipeline_yaml_and_sees_versions_yaml_and_changes(as_admin, shop):
    url = f"/projects/{shop.id}/pipeline"
    index = as_admin.get("/").text
    assert f'href="{url}"' in index  # the projects list links the pipeline
    assert 'data-testid="no-versions"' in as_admin.get(url).text

    text = yaml.safe_dump({**definition(), "comment": "first"})
    first = _post(as_admin, url + "/import", page=url, yaml=text.replace("\n", "\r\n"))
    assert first.headers["Location"] == url
    page = as_admin.get(url).text
    assert ("ok", "Pipeline version 1 of shop saved.") in _flashes(page)
    assert re.search(r'<tr data-version="1">\s*<td>1 <small class="badge">latest</small></td>\s*'
                     r"<td>admin</td>", page)
    assert "first" in page and "service: postgres" in html.unescape(page)
    assert f'href="/api/v1/projects/{shop.id}/pipeline/export"' in page

    second = definition()
    second["nodes"][0]["env"]["POSTGRES_USER"] = "shop"
    _post(as_admin, url + "/import", page=url, yaml=yaml.safe_dump(second))
    changes = as_admin.get(url + "?diff=2").text
    assert "Changes in version 2 since version 1" in changes
    assert re.search(r"Node <code>db</code> changed", changes)
    assert "env.POSTGRES_USER" in changes
    assert "(the first version)" in as_admin.get(url + "?diff=1").text
    assert as_admin.get(url + "?diff=9").status_code == 404


def test_the_pipeline_page_compares_any_two_versions_and_opens_an_older_one(as_admin, shop, admin):
    url = f"/projects/{shop.id}/pipeline"
    first = definition()
    pipelines.save_version(admin, shop, first, "one")
    first["nodes"][0]["env"]["POSTGRES_USER"] = "shop"
    pipelines.save_version(admin, shop, first, "two")
    first["edges"].pop(0)
    pipelines.save_version(admin, shop, first, "three")
    page = as_admin.get(url).text
    assert 'data-testid="compare"' in page
    assert f'data-version-url="/api/v1/projects/{shop.id}/pipeline/versions/3"' in page
    changes = html.unescape(as_admin.get(url + "?diff=3&against=1").text)
    assert "Changes in version 3 since version 1" in changes
    assert "env.POSTGRES_USER" in changes and "Edges removed: <code>db → mkdb</code>" in changes
    assert "Changes in version 3 since version 2" in as_admin.get(url + "?diff=3").text
    assert as_admin.get(url + "?diff=3&against=7").status_code == 404
    older = as_admin.get(url + "?version=1").text
    assert f'data-version-url="/api/v1/projects/{shop.id}/pipeline/versions/1"' in older
    assert as_admin.get(url + "?version=8").status_code == 404


def test_bad_pipeline_yaml_is_shown_with_its_fields_and_saves_nothing(as_admin, shop):
    url = f"/projects/{shop.id}/pipeline"
    before = _counts()
    bad = definition()
    bad["nodes"][0]["service"] = "no-such-service"
    refused = _post(as_admin, url + "/import", page=url, yaml=yaml.safe_dump(bad))
    assert refused.status_code == 422
    problems = re.search(r'data-testid="import-errors">(.*?)</ul>', refused.text, re.S).group(1)
    assert "<code>nodes.db.service</code>" in problems
    assert "no-such-service" in refused.text  # the textarea keeps what was sent

    malformed = _post(as_admin, url + "/import", page=url, yaml="nodes: [\n")
    assert malformed.status_code == 422 and "<code>body</code>" in malformed.text
    assert _counts() == before


def test_pipeline_versions_are_paginated_newest_first(as_admin, shop, admin):
    db.session.add_all(PipelineVersion(project_id=shop.id, number=n, comment=f"v{n}",
                                       definition={"nodes": [], "edges": []}, resolved={"steps": []},
                                       created_by_id=admin.id) for n in range(1, 23))
    db.session.commit()
    url = f"/projects/{shop.id}/pipeline"
    first = re.findall(r'data-version="(\d+)"', as_admin.get(url).text)
    assert first == [str(n) for n in range(22, 2, -1)]
    second = as_admin.get(url + "?page=2").text
    assert re.findall(r'data-version="(\d+)"', second) == ["2", "1"]
    assert "Page 2 of 2 · 22 versions" in second
