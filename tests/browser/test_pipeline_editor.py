"""The visual pipeline editor through a real browser (frontend/pipeline-editor): an admin drags
catalog items onto the canvas, connects handles, fills a plugin's schema form and saves
versions, sees the server's problems on the node and field they concern; a read-only member
sees the graph and nothing to change it with, and the API refuses their save."""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import Plugin, Project
from app.services import catalog, pipelines
from tests.access.pipelines import definition, docker_hub, make_catalog

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")
SMALL_SCREEN = {"width": 1366, "height": 768}
RED = re.compile(r"\bhas-problems\b")  # a node the server found problems on (shared/StepNode.jsx)


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def _connect(page, source, target):
    """Press on the source node's right handle and release on the target's left one."""
    start = page.get_by_test_id(f"node-{source}").locator(".react-flow__handle-right").bounding_box()
    end = page.get_by_test_id(f"node-{target}").locator(".react-flow__handle-left").bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + 2, end["y"] + 2, steps=8)
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=4)
    page.mouse.up()


def _rename(panel, new_id):
    field = panel.get_by_label("Node id")
    field.fill(new_id)
    field.press("Enter")


@pytest.fixture
def shop(admin):
    project = Project(name="shop")
    db.session.add(project)
    db.session.commit()
    make_catalog()
    catalog.put_secret(admin, project, "DB_PASSWORD", "pw-123")
    return project


def test_admin_builds_a_pipeline_by_dragging_and_connecting_and_fixes_what_the_server_refused(
        live_server, browser_login, shop):
    page = browser_login("admin")
    page.set_viewport_size(SMALL_SCREEN)
    page.goto(f"/projects/{shop.id}/pipeline")
    editor = page.get_by_test_id("editor")
    canvas = editor.locator(".react-flow__pane")
    nodes, edges = editor.locator(".react-flow__node"), editor.locator(".react-flow__edge")
    panel = page.get_by_role("complementary", name="Selected element")
    expect(page.get_by_role("region", name="Catalog palette")).to_be_visible()

    # Drag a service and a plugin from the palette onto the canvas, then connect them.
    page.get_by_test_id("palette-service-postgres").drag_to(canvas, target_position={"x": 110, "y": 120})
    plugin = page.get_by_test_id("palette-plugin-postgres-database")
    plugin.drag_to(canvas, target_position={"x": 380, "y": 200})
    expect(nodes).to_have_count(2)
    expect(page.get_by_test_id("node-postgres")).to_be_visible()
    expect(page.get_by_test_id("node-postgres-database")).to_be_visible()
    # The dropped plugin is selected: its side panel is open. Rename both to short ids.
    expect(panel.get_by_role("heading", name="Plugin step postgres-database")).to_be_visible()
    _rename(panel, "mkdb")
    expect(page.get_by_test_id("node-mkdb")).to_be_visible()
    page.get_by_test_id("node-postgres").click()
    expect(panel.get_by_test_id("service-facts")).to_contain_text("TCP port 5432")
    _rename(panel, "db")
    _connect(page, "db", "mkdb")
    expect(edges).to_have_count(1)

    # The plugin's form comes from its JSON Schema; values are offered the graph's references.
    page.get_by_test_id("node-mkdb").click()
    expect(panel.get_by_text("Parameters")).to_be_visible()
    host = panel.get_by_label("host")
    expect(host).to_have_attribute("aria-required", "true")
    expect(panel.locator("datalist option[value='${services.db.host}']")).to_have_count(1)
    expect(panel.locator("datalist option[value='${secrets.DB_PASSWORD}']")).to_have_count(1)
    host.fill("${services.db.host}")
    panel.get_by_label("password").fill("${secrets.DB_PASSWORD}")
    panel.get_by_label("size_mb").fill("64")
    _shot(page, "editor-drawn")
    page.get_by_label("Comment").fill("drawn in the editor")
    page.get_by_role("button", name="Save as version 1").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 1 saved.")
    expect(page.locator("tr[data-version='1']")).to_contain_text("drawn in the editor")
    expect(editor).to_have_attribute("data-dirty", "0")

    # A bad value: the server names the node and the field; the drawing stays.
    panel.get_by_label("size_mb").fill("0")
    expect(editor).to_have_attribute("data-dirty", "1")
    page.get_by_role("button", name="Save as version 2").click()
    expect(page.get_by_test_id("editor-status")).to_contain_text("Not saved")
    expect(page.get_by_test_id("node-mkdb")).to_have_class(RED)
    expect(page.get_by_test_id("node-db")).not_to_have_class(RED)
    size_field = panel.locator("[data-field='params.size_mb']")
    expect(size_field.get_by_test_id("field-error")).to_contain_text("less than the minimum of 1")
    expect(panel.get_by_label("size_mb")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("save-problems")).to_contain_text("nodes.mkdb.params.size_mb")
    expect(nodes).to_have_count(2)
    expect(edges).to_have_count(1)
    _shot(page, "editor-refused")
    page.locator("#graph").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('graph').scrollIntoView()")
    page.screenshot(path=SHOTS / "editor-refused-1366x768.png")  # what fits on the screen

    # Fix it, add a node with the keyboard's Add button and connect it; a stray one is deleted.
    panel.get_by_label("size_mb").fill("32")
    expect(size_field.get_by_test_id("field-error")).to_have_count(0)
    expect(page.get_by_test_id("node-mkdb")).not_to_have_class(RED)
    page.get_by_role("button", name="Add service shop-web").click()
    expect(page.get_by_test_id("node-shop-web")).to_be_visible()
    page.get_by_role("button", name="Add plugin postgres-database").click()
    expect(nodes).to_have_count(4)
    page.get_by_test_id("node-postgres-database").click()
    page.keyboard.press("Delete")
    expect(nodes).to_have_count(3)
    _connect(page, "mkdb", "shop-web")
    expect(edges).to_have_count(2)
    page.get_by_role("button", name="Tidy layout").click()  # elkjs: left to right, in running order
    page.wait_for_function("""() => {
      const x = (id) => document.querySelector(`[data-testid=node-${id}]`).getBoundingClientRect().x;
      return x("db") < x("mkdb") && x("mkdb") < x("shop-web");
    }""")
    page.get_by_test_id("node-shop-web").click()
    expect(panel.locator("datalist option[value='${services.db.url}']")).to_have_count(1)
    expect(panel.locator("datalist option[value='${steps.mkdb.outputs.']")).to_have_count(1)
    panel.get_by_role("button", name="Add variable").click()
    panel.get_by_label("Variable 1 name").fill("DATABASE_URL")
    panel.get_by_label("Variable DATABASE_URL value").fill("${steps.mkdb.outputs.url}")
    # A secret as a file (issue 17 item 8), edited like env.
    panel.get_by_role("button", name="Add file").click()
    panel.get_by_label("File 1 name").fill("db_password")
    panel.get_by_label("File db_password value").fill("${secrets.DB_PASSWORD}")
    page.get_by_label("Comment").fill("web added")
    page.get_by_role("button", name="Save as version 2").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 2 saved.")
    expect(page.get_by_test_id("save-problems")).to_have_count(0)
    expect(page.locator("tr[data-version='2']")).to_contain_text("web added")
    _shot(page, "editor-saved")

    saved = pipelines.get_version(db.session.get(Project, shop.id), 2).definition
    by_id = {n["id"]: n for n in saved["nodes"]}
    assert sorted(by_id) == ["db", "mkdb", "shop-web"]
    assert by_id["mkdb"]["params"] == {"host": "${services.db.host}", "password": "${secrets.DB_PASSWORD}",
                                       "size_mb": 32}
    assert by_id["shop-web"]["env"] == {"DATABASE_URL": "${steps.mkdb.outputs.url}"}
    assert by_id["shop-web"]["secret_files"] == {"db_password": "${secrets.DB_PASSWORD}"}
    assert "env" not in by_id["db"] and "secret_files" not in by_id["db"]
    assert all("position" in n for n in saved["nodes"])
    assert sorted((e["from"], e["to"]) for e in saved["edges"]) == [("db", "mkdb"), ("mkdb", "shop-web")]


def test_a_read_only_member_sees_the_graph_but_cannot_change_or_save_it(live_server, browser_login,
                                                                        spec_example):
    admin, project = spec_example["admin"], spec_example["project"]
    make_catalog()
    catalog.put_secret(admin, project, "DB_PASSWORD", "pw-123")
    pipelines.save_version(admin, project, definition(), "first")
    pipelines.save_version(admin, project, definition(), "second")
    db.session.commit()
    page = browser_login("qa-anna")
    page.set_viewport_size(SMALL_SCREEN)
    page.goto(f"/projects/{project.id}/pipeline")
    editor = page.get_by_test_id("editor")
    expect(editor.locator(".react-flow__node")).to_have_count(3)
    expect(editor.locator(".react-flow__edge")).to_have_count(2)
    expect(page.get_by_test_id("palette")).to_have_count(0)
    expect(page.get_by_role("button", name="Save as version 3")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete selected")).to_have_count(0)
    page.get_by_test_id("node-mkdb").click()
    panel = page.get_by_role("complementary", name="Selected element")
    expect(panel.get_by_label("host")).to_have_value("${services.db.host}")
    expect(panel.get_by_label("host")).not_to_be_editable()
    expect(panel.get_by_role("button", name="Delete node mkdb")).to_have_count(0)
    _shot(page, "editor-read-only")

    # An older version opens in the same canvas.
    page.goto(f"/projects/{project.id}/pipeline?version=1")
    expect(page.get_by_test_id("shown-version")).to_have_text("Version 1 (the latest is 2)")

    # The session's own API call is refused, CSRF token and all.
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    response = page.request.post(f"/api/v1/projects/{project.id}/pipeline/versions",
                                 data={"definition": definition(), "comment": "sneaky"},
                                 headers={"X-CSRFToken": token})
    assert response.status == 403
    assert pipelines.latest_version(db.session.get(Project, project.id)).number == 2


def test_admin_starts_from_an_older_version_rewires_it_and_is_warned_before_leaving_unsaved(
        live_server, browser_login, shop, admin):
    first = definition()
    pipelines.save_version(admin, shop, first, "one")
    second = definition()
    second["nodes"][0]["env"]["POSTGRES_USER"] = "shop"
    pipelines.save_version(admin, shop, second, "two")
    db.session.commit()
    page = browser_login("admin")
    page.set_viewport_size(SMALL_SCREEN)
    page.goto(f"/projects/{shop.id}/pipeline")
    page.get_by_role("link", name="Open version 1 in the editor").click()
    expect(page.get_by_test_id("shown-version")).to_have_text("Version 1 (the latest is 2)")
    editor = page.get_by_test_id("editor")
    edges = editor.locator(".react-flow__edge")
    expect(edges).to_have_count(2)

    # Select an edge on the canvas and delete it with the toolbar button...
    editor.locator(".react-flow__edge[data-id='mkdb->web'] .react-flow__edge-interaction").click(force=True)
    expect(page.get_by_test_id("edge-panel")).to_contain_text("web runs after mkdb")
    page.get_by_role("button", name="Delete selected").click()
    expect(edges).to_have_count(1)
    # ...and draw it again from the keyboard: the side panel's "Runs after" boxes.
    page.get_by_test_id("node-web").click()
    panel = page.get_by_role("complementary", name="Selected element")
    panel.get_by_role("checkbox", name="mkdb", exact=True).check()
    expect(edges).to_have_count(2)
    panel.get_by_role("checkbox", name="db", exact=True).check()
    expect(edges).to_have_count(3)

    # Leaving with unsaved changes asks first; staying keeps the drawing.
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.dismiss()))
    page.get_by_role("link", name="Overview").click()
    expect(edges).to_have_count(3)
    assert dialogs == ["beforeunload"]

    page.get_by_label("Comment").fill("from version 1, web after db too")
    page.get_by_role("button", name="Save as version 3").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 3 saved.")
    expect(page.get_by_test_id("shown-version")).to_have_text("Version 3")
    assert "version=" not in page.url  # a reload shows version 3
    saved = pipelines.get_version(db.session.get(Project, shop.id), 3).definition
    assert saved["nodes"][0]["env"] == first["nodes"][0]["env"]  # version 1's, not version 2's
    assert sorted((e["from"], e["to"]) for e in saved["edges"]) == [
        ("db", "mkdb"), ("db", "web"), ("mkdb", "web")]
    page.get_by_role("link", name="Overview").click()  # saved: no question asked
    page.wait_for_url(f"{live_server}/")


RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "The database to make", "maxLength": 63},
        "engine": {"type": "string", "enum": ["postgres", "mysql"], "default": "postgres"},
        "create_user": {"type": "boolean", "title": "Create a user", "default": False},
        "ratio": {"type": "number", "default": 0.5, "description": "A share of the server"},
        "labels": {"type": "object", "description": "Extra labels"},
    },
    "required": ["name", "engine"],
    "additionalProperties": False,
}


def test_a_plugins_form_follows_its_json_schema(live_server, browser_login, shop):
    db.session.add(Plugin(name="db-kit", registry_id=docker_hub().id, image="team/db-kit", tag="2.0",
                          params_schema=RICH_SCHEMA))
    db.session.commit()
    page = browser_login("admin")
    page.set_viewport_size(SMALL_SCREEN)
    page.goto(f"/projects/{shop.id}/pipeline")
    page.get_by_role("button", name="Add plugin db-kit").click()
    panel = page.get_by_role("complementary", name="Selected element")
    field = lambda name: panel.locator(f"[data-field='params.{name}']")  # noqa: E731

    # Defaults are filled in; required fields are marked; descriptions are shown.
    expect(field("engine").locator("select")).to_have_value("0")  # the first enum value
    expect(field("engine").locator("select option:checked")).to_have_text("postgres")
    expect(field("create_user").get_by_label("Create a user")).not_to_be_checked()
    expect(field("ratio").locator("input")).to_have_value("0.5")
    expect(field("name").locator("abbr[title=required]")).to_have_count(1)
    expect(field("ratio").locator("abbr[title=required]")).to_have_count(0)
    expect(field("name")).to_contain_text("The database to make")
    expect(field("labels").locator("textarea")).to_be_visible()

    # A required parameter left out: the server's message lands on that field.
    page.get_by_role("button", name="Save as version 1").click()
    expect(field("name").get_by_test_id("field-error")).to_contain_text("'name' is a required property")
    expect(page.get_by_test_id("node-db-kit")).to_have_class(RED)

    field("name").locator("input").fill("shop")
    field("engine").locator("select").select_option(label="mysql")
    field("create_user").get_by_label("Create a user").check()
    field("ratio").locator("input").fill("0.25")
    labels = field("labels").locator("textarea")
    labels.fill("{bad")
    labels.blur()
    expect(field("labels")).to_contain_text("not JSON")
    labels.fill('{"team": "qa"}')
    labels.blur()
    expect(field("labels")).not_to_contain_text("not JSON")
    page.get_by_role("button", name="Save as version 1").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 1 saved.")
    expect(page.locator("tr[data-version='1']")).to_be_visible()
    _shot(page, "editor-schema-form")
    [node] = pipelines.get_version(db.session.get(Project, shop.id), 1).definition["nodes"]
    assert node["params"] == {"name": "shop", "engine": "mysql", "create_user": True, "ratio": 0.25,
                              "labels": {"team": "qa"}}


def test_a_nodes_own_limits_are_set_in_the_side_panel_and_checked_against_the_projects(
        live_server, browser_login, shop, admin):
    """Issue 18 item 1: the panel shows a node's own cpus and memory_mb (empty: shares the
    project's; a plugin's placeholder is its catalog's), and the server's refusal lands on them."""
    pipelines.save_version(admin, shop, definition(), "one")   # shop: 1 CPU, 1024 MB
    db.session.commit()
    page = browser_login("admin")
    page.set_viewport_size(SMALL_SCREEN)
    page.goto(f"/projects/{shop.id}/pipeline")
    page.get_by_test_id("node-mkdb").click()
    limits = page.get_by_test_id("own-limits")
    expect(limits.locator("[data-field='cpus']")).to_have_attribute("placeholder", "catalog: 0.5")
    page.get_by_test_id("node-db").click()
    cpus = limits.locator("[data-field='cpus']")
    expect(cpus).to_have_attribute("placeholder", "shares the project's")
    cpus.fill("1.5")
    limits.locator("[data-field='memory_mb']").fill("512")
    page.get_by_role("button", name="Save as version 2").click()
    expect(limits.get_by_test_id("field-error")).to_contain_text(
        "1.5 CPUs is more than project shop's limit of 1 CPU per deployment")
    cpus.fill("0.5")
    page.get_by_role("button", name="Save as version 2").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 2 saved.")
    db_node = pipelines.get_version(db.session.get(Project, shop.id), 2).definition["nodes"][0]
    assert (db_node["cpus"], db_node["memory_mb"]) == (0.5, 512)
