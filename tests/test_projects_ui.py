"""Project pages through the test client: admins create, change and delete projects, their
limits, secrets and team grants through the forms; bad input is named by field and writes
nothing; users whose team holds a grant read the project without a single form; everyone else
gets 404 (as if it did not exist) or 403 on every change."""
import html
import re

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, Grant, Project, ProjectSecret, Team
from app.services import catalog, teams
from app.ui import projects as project_pages
from tests.access.deployments import add_deployment, add_node, pipeline_version
from tests.conftest import csrf_from, rows_of

PROJECT_FORM = {"name": "shop", "description": "the shop", "cpus": "2.5", "memory_mb": "2048",
                "cleanup_minutes": "90"}


def _post(client, action, page="/projects", **fields):
    """Submit a form the way the browser does: CSRF token taken from a page."""
    token = csrf_from(client.get(page).text)
    return client.post(action, data={"csrf_token": token, **fields})


def _flashes(text):
    return [(kind, html.unescape(message))
            for kind, message in re.findall(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', text)]


def _field_errors(text):
    return {name: html.unescape(hint) for name, hint in
            re.findall(r'class="field-error" id="[^"]*" data-field="(\w+)">([^<]*)<', text)}


def _count(model):
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def _counts():
    return rows_of(Project, ProjectSecret, Grant, AuditEntry)


def _buttons(text):
    """The page's submit buttons but the navigation's Log out."""
    return [b for b in re.findall(r'<button type="submit"[^>]*>([^<]+)</button>', text) if b != "Log out"]


def _forms(text):
    return text.count('method="post"') - text.count('method="post" action="/logout"')


@pytest.fixture
def as_admin(client, login, admin):
    login("admin")
    return client


# --- create, change, delete ---------------------------------------------------------------------
def test_admin_creates_changes_and_deletes_a_project_through_the_forms(as_admin):
    listing = as_admin.get("/projects")
    assert listing.status_code == 200 and "Create project" in listing.text
    created = _post(as_admin, "/projects", **PROJECT_FORM)
    assert created.status_code == 302, _field_errors(created.text)
    project = db.session.scalar(select(Project))
    assert (project.name, project.cpus, project.memory_mb, project.cleanup_minutes) == (
        "shop", 2.5, 2048, 90)
    assert created.headers["Location"] == f"/projects/{project.id}"
    page = as_admin.get(created.headers["Location"]).text
    assert ("ok", "Project shop created. Add its secrets and grant teams access below.") in _flashes(page)
    assert f'href="/projects/{project.id}/pipeline"' in page
    assert f'href="/deployments?project={project.id}"' in page
    assert _buttons(page) == ["Save project", "Add secret", "Delete project"]  # no team to grant yet

    # An empty auto-cleanup override gives the environment's back.
    url = f"/projects/{project.id}"
    changed = _post(as_admin, url, page=url, **{**PROJECT_FORM, "name": "shop-two", "cpus": "0.5",
                                                "cleanup_minutes": ""})
    assert changed.headers["Location"] == url
    db.session.expire_all()
    assert (project.name, project.cpus, project.cleanup_minutes) == ("shop-two", 0.5, None)
    assert "the environment&#39;s default" in as_admin.get(url).text

    deleted = _post(as_admin, f"{url}/delete", page=url)
    assert deleted.headers["Location"] == "/projects"
    assert _count(Project) == 0
    assert ("ok", "Project shop-two deleted.") in _flashes(as_admin.get("/projects").text)


@pytest.mark.parametrize(("field", "value", "hint"), [
    ("name", "Shop Web", "lowercase letters"),
    ("cpus", "lots", "a number from 0.05 to 256"),
    ("cpus", "0", "a number from 0.05 to 256"),
    ("memory_mb", "1.5", "a whole number from 16"),
    ("cleanup_minutes", "1", "a whole number of minutes from 5"),
    ("description", "x" * 501, "at most 500 characters"),
])
def test_bad_project_input_is_named_by_field_and_writes_nothing(as_admin, field, value, hint):
    before = _counts()
    refused = _post(as_admin, "/projects", **{**PROJECT_FORM, field: value})
    assert refused.status_code == 422
    errors = _field_errors(refused.text)
    assert list(errors) == [field] and hint in errors[field].lower(), errors
    kept = "cpus" if field == "memory_mb" else "memory_mb"
    assert f'value="{PROJECT_FORM[kept]}"' in refused.text  # what was typed stays
    assert _counts() == before

    project = catalog.create(None, Project, "kept", cpus=1.0)
    before = _counts()
    url = f"/projects/{project.id}"
    again = _post(as_admin, url, page=url, **{**PROJECT_FORM, "name": "kept", field: value})
    assert again.status_code == 422 and list(_field_errors(again.text)) == [field]
    assert _counts() == before
    db.session.expire_all()
    assert (project.name, project.cpus, project.memory_mb, project.cleanup_minutes) == (
        "kept", 1.0, 1024, None)


def test_a_taken_name_is_refused_on_the_name_field(as_admin):
    catalog.create(None, Project, "shop")
    before = _counts()
    refused = _post(as_admin, "/projects", **PROJECT_FORM)
    assert refused.status_code == 409 and _field_errors(refused.text) == {"name": "already taken"}
    assert _counts() == before


def test_deleting_a_project_with_live_deployments_is_refused_with_a_message(as_admin, spec_example):
    project = spec_example["project"]
    version = pipeline_version(project, [])
    node = add_node(spec_example["environment"], "node-1")
    add_deployment(version, spec_example["environment"], node, "pr-1")
    url = f"/projects/{project.id}"
    before = _counts()
    refused = _post(as_admin, f"{url}/delete", page=url)
    assert refused.headers["Location"] == url
    (kind, message), = _flashes(as_admin.get(url).text)
    assert kind == "error"
    assert message == "project shop has 1 deployment(s) that are not deleted yet: delete them first"
    assert _counts() == before


def test_the_list_is_paginated_by_name(as_admin):
    for number in range(project_pages.PER_PAGE + 2):
        catalog.create(None, Project, f"p-{number:02d}")
    first = as_admin.get("/projects").text
    assert first.count("data-project=") == project_pages.PER_PAGE
    assert 'data-project="p-00"' in first and 'href="/projects?page=2"' in first
    second = as_admin.get("/projects?page=2").text
    assert re.findall(r'data-project="([^"]+)"', second) == ["p-25", "p-26"]
    assert "Page 2 of 2 · 27 projects" in second


def test_the_nav_links_to_projects(as_admin):
    assert '<a href="/projects">Projects</a>' in as_admin.get("/").text


# --- secrets ------------------------------------------------------------------------------------
def test_secrets_are_listed_by_name_and_their_values_are_never_rendered(as_admin, app):
    project = catalog.create(None, Project, "shop")
    url = f"/projects/{project.id}"
    added = _post(as_admin, f"{url}/secrets", page=url, name="DB_PASSWORD", value="pw-first-123")
    assert added.headers["Location"] == f"{url}#secrets"
    page = as_admin.get(url)
    assert ("ok", "Secret DB_PASSWORD added.") in _flashes(page.text)
    assert 'data-secret="DB_PASSWORD"' in page.text and "pw-first-123" not in page.text
    assert page.headers["Cache-Control"] == "no-store"

    replaced = _post(as_admin, f"{url}/secrets/DB_PASSWORD/replace", page=url, value="pw-second-456")
    assert replaced.status_code == 302
    secret = db.session.scalar(select(ProjectSecret))
    db.session.refresh(secret)
    assert catalog.reveal_secret(secret) == "pw-second-456"
    page = as_admin.get(url).text
    assert ("ok", "Secret DB_PASSWORD replaced.") in _flashes(page) and "pw-second-456" not in page
    # Nothing in the audit log holds a value either.
    assert all("pw-" not in str(e.details) for e in db.session.scalars(select(AuditEntry)))

    deleted = _post(as_admin, f"{url}/secrets/DB_PASSWORD/delete", page=url)
    assert deleted.status_code == 302 and _count(ProjectSecret) == 0
    assert 'data-testid="no-secrets"' in as_admin.get(url).text


def test_bad_secrets_are_named_by_field_and_the_value_is_not_echoed(as_admin):
    project = catalog.create(None, Project, "shop")
    catalog.put_secret(None, project, "API_KEY", "key-kept-1")
    url = f"/projects/{project.id}"
    before = _counts()
    bad_name = _post(as_admin, f"{url}/secrets", page=url, name="db password", value="typed-pw-789")
    assert bad_name.status_code == 422 and list(_field_errors(bad_name.text)) == ["name"]
    assert "typed-pw-789" not in bad_name.text
    empty = _post(as_admin, f"{url}/secrets", page=url, name="DB_PASSWORD", value="")
    assert empty.status_code == 422 and list(_field_errors(empty.text)) == ["value"]
    blank_replace = _post(as_admin, f"{url}/secrets/API_KEY/replace", page=url, value="")
    assert blank_replace.status_code == 422 and list(_field_errors(blank_replace.text)) == ["value"]
    assert _post(as_admin, f"{url}/secrets/NOPE/replace", page=url, value="x1").status_code == 404
    assert _post(as_admin, f"{url}/secrets/NOPE/delete", page=url).status_code == 404
    assert _counts() == before
    assert catalog.reveal_secret(db.session.scalar(select(ProjectSecret))) == "key-kept-1"


# --- team grants --------------------------------------------------------------------------------
def test_admin_grants_teams_from_the_project_page_with_a_flash_for_each_change(as_admin, spec_example):
    project = spec_example["other_project"]  # billing: no grants yet
    frontend = teams.create(None, "Frontend Team")
    url = f"/projects/{project.id}"
    page = as_admin.get(url).text
    assert 'data-testid="no-grants"' in page
    assert re.findall(r'<option value="(\d+)">([^<]+)</option>', page) == [
        (str(frontend.id), "Frontend Team"), (str(spec_example["qa"].id), "QA Team"),
        (str(spec_example["se"].id), "SE Team")]

    added = _post(as_admin, f"{url}/grants", page=url, team_id=str(spec_example["qa"].id),
                  level="read_only")
    assert added.headers["Location"] == f"{url}#grants"
    page = as_admin.get(url).text
    assert ("ok", "Team QA Team granted Read-Only on billing.") in _flashes(page)
    row = db.session.scalar(select(Grant).where(Grant.project_id == project.id))
    assert (row.team_id, row.level) == (spec_example["qa"].id, "read_only")

    _post(as_admin, f"{url}/grants/{row.id}", page=url, level="full")
    assert ("ok", "Team QA Team now has Full Access on billing.") in _flashes(as_admin.get(url).text)
    db.session.expire_all()
    assert row.level == "full"

    before = _counts()
    twice = _post(as_admin, f"{url}/grants", page=url, team_id=str(spec_example["qa"].id), level="full")
    assert twice.status_code == 409 and list(_field_errors(twice.text)) == ["team_id"]
    no_team = _post(as_admin, f"{url}/grants", page=url, team_id="", level="full")
    assert no_team.status_code == 422 and _field_errors(no_team.text) == {"team_id": "choose a team"}
    bad_level = _post(as_admin, f"{url}/grants", page=url, team_id=str(frontend.id), level="owner")
    assert bad_level.status_code == 422 and list(_field_errors(bad_level.text)) == ["level"]
    assert _counts() == before

    # A grant of another project is not removed through this one.
    other = db.session.scalar(select(Grant).where(Grant.project_id == spec_example["project"].id))
    assert _post(as_admin, f"{url}/grants/{other.id}/remove", page=url).status_code == 404

    removed = _post(as_admin, f"{url}/grants/{row.id}/remove", page=url)
    assert removed.status_code == 302
    assert ("ok", "Team QA Team no longer has access to billing.") in _flashes(as_admin.get(url).text)
    assert db.session.scalar(select(Grant).where(Grant.project_id == project.id)) is None


# --- who sees what ------------------------------------------------------------------------------
@pytest.mark.parametrize(("who", "level"), [("qa-anna", "Read-Only"), ("se-bob", "Full Access")])
def test_users_with_a_grant_read_the_project_without_any_form(client, login, spec_example, who, level):
    project = spec_example["project"]
    catalog.put_secret(None, project, "DB_PASSWORD", "pw-hidden-1")
    login(who)
    listing = client.get("/projects").text
    assert re.findall(r'data-project="([^"]+)"', listing) == ["shop"]  # not billing
    assert _buttons(listing) == [] and _forms(listing) == 0
    page = client.get(f"/projects/{project.id}")
    assert page.status_code == 200
    assert _buttons(page.text) == [] and _forms(page.text) == 0
    assert "1024 MB" in page.text and f"<td>{level}</td>" in page.text
    assert f'href="/projects/{project.id}/pipeline"' in page.text
    # Full Access (on the project or an environment) may deploy it: the page links the form.
    assert (f'href="/deployments/new?project_id={project.id}"' in page.text) == (who == "se-bob")
    # Secret names and other teams' grants are admin business, as in the API.
    assert "DB_PASSWORD" not in page.text and "SE Team" not in page.text
    assert client.get(f"/projects/{spec_example['other_project'].id}").status_code == 404


def test_outsiders_see_no_projects(client, login, spec_example):
    login("nobody")
    assert "No projects you can see yet" in client.get("/projects").text
    assert client.get(f"/projects/{spec_example['project'].id}").status_code == 404


def _project_posts(app):
    return [rule for rule in app.url_map.iter_rules() if "POST" in rule.methods
            and app.view_functions[rule.endpoint].__module__ == project_pages.__name__]


def _path(rule, ids):
    return re.sub(r"<(?:int:)?(\w+)>", lambda m: str(ids[m.group(1)]), rule.rule)


@pytest.mark.parametrize("who", ["se-bob", "qa-anna"])
def test_users_with_a_grant_get_403_naming_the_action_on_every_project_change(app, client, login,
                                                                               spec_example, who):
    project = spec_example["project"]
    catalog.put_secret(None, project, "DB_PASSWORD", "pw-1")
    grant = db.session.scalar(select(Grant).where(Grant.project_id == project.id))
    ids = {"project_id": project.id, "name": "DB_PASSWORD", "grant_id": grant.id}
    login(who)
    before = _counts()
    posts = _project_posts(app)
    assert len(posts) == 9
    refusals = {}
    for rule in posts:
        path = _path(rule, ids)
        response = _post(client, path, name="x", value="v", team_id=str(spec_example["qa"].id),
                         level="full", cpus="1", memory_mb="64")
        assert response.status_code == 403, (path, response.status_code)
        refusals[rule.endpoint] = html.unescape(re.search(r"<p>(you may not[^<]+)</p>", response.text)[1])
    assert _counts() == before
    assert refusals["ui.project_create"] == "you may not create this project; ask an admin for access"
    assert refusals["ui.project_delete"] == "you may not delete this project; ask an admin for access"
    assert refusals["ui.project_update"] == "you may not change this project; ask an admin for access"
    assert refusals["ui.project_secret_delete"].startswith("you may not delete a secret of this project")


def test_outsiders_get_404_on_every_change_of_a_project_and_403_on_create(app, client, login,
                                                                         spec_example):
    project = spec_example["project"]
    grant = db.session.scalar(select(Grant).where(Grant.project_id == project.id))
    ids = {"project_id": project.id, "name": "DB_PASSWORD", "grant_id": grant.id}
    login("nobody")
    before = _counts()
    for rule in _project_posts(app):
        response = _post(client, _path(rule, ids), name="x", value="v", level="full")
        expected = 403 if rule.endpoint == "ui.project_create" else 404
        assert response.status_code == expected, (rule.rule, response.status_code)
    assert _counts() == before
    assert _count(Team) == 2
