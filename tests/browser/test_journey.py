"""Issue 15's "Done means" as one story through a real browser, on the real stack: the pipeline
an admin draws in the editor is the one a writer deploys on a real agent.

An admin, through the UI only, adds a registry (a real docker-registry of the test's own holding
a busybox web image under two tags and the first-party http-wait plugin image), a service whose
tag is chosen at deploy time, the plugin with its parameters' JSON Schema, a project with CPU and
memory limits and a secret, and two teams' grants (Full Access for se-bob, Read-Only for
qa-anna, on the project and the environment; the environment and its node come from fixtures,
the node needs an agent's token). The admin draws the pipeline by dragging from the palette and
connecting handles, fills the plugin's schema form with a reference the form offers, sees a bad
value refused on the plugin's node and field, fixes it and saves; then adds a node and saves
again. The writer deploys that version choosing a tag, watches the graph turn green without a
reload, opens the service URL through Caddy and gets the chosen tag's answer, follows the log and
sees a new line arrive, sees the CPU and memory charts drawn, extends, clones and deletes. The
reader sees the same deployment without action buttons; a form posted by hand is refused (403).
Screenshots of each main page go to /tmp/nullops-shots/journey-*.png.
"""
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import Deployment, PipelineVersion, Project
from app.services import admission
from tests.browser.test_deployment_page import _action_buttons, ingress  # noqa: F401 - fixture
from tests.browser.test_log_follow_ui import make_it_print
from tests.browser.test_pipeline_editor import RED, _connect, _rename
from tests.caddytools import caddy, web  # noqa: F401 - fixtures
from tests.controller.conftest import (  # noqa: F401 - fixtures
    add_node,
    agents,
    controller,
    deployment_row,
    environment,
    wait_for_status,
)
from tests.controller.test_deployments import TOKEN
from tests.dockertools import BUSYBOX_IMAGE
from tests.e2e.test_demo import open_registry, push
from tests.plugins.images import build

pytestmark = [pytest.mark.browser, pytest.mark.docker]

SHOTS = Path("/tmp/nullops-shots")
LAPTOP = {"width": 1366, "height": 768}
RUN_MS = 60_000  # what the real stack may take on a busy 2-core machine; expect() returns sooner
WEB_TAGS = ("1.0", "1.1")
# The web image's own command: serves /www, prints `after-follow-<word>` once the test writes
# <word> to /tmp/go in its container (tests/browser/test_log_follow_ui.py's make_it_print).
WEB_COMMAND = ("echo web-started; (while [ ! -s /tmp/go ]; do sleep 0.1; done; "
               "echo after-follow-$(cat /tmp/go)) & exec httpd -f -p 8000 -h /www")
WEB_DOCKERFILE = f"""FROM {{base}}
COPY index.html /www/index.html
CMD ["sh", "-c", "{WEB_COMMAND}"]
"""
WEB_INSIDE = "http://${services.web.host}:${services.web.port}"
HTTP_WAIT_SCHEMA = (Path(__file__).resolve().parents[2] / "plugins" / "http-wait" / "schema.json").read_text()


def _web_image(docker_client, folder, tag):
    """nullops-test/journey-web:<tag>: busybox answering "journey web <tag>" on port 8000."""
    folder.mkdir()
    (folder / "Dockerfile").write_text(WEB_DOCKERFILE.format(base=BUSYBOX_IMAGE))
    (folder / "index.html").write_text(f"journey web {tag}\n")
    name = f"nullops-test/journey-web:{tag}"
    docker_client.images.build(path=str(folder), tag=name, forcerm=True, rm=True, pull=False)
    return name


class Registry:
    """The test's registry: `address` at once, its images pushed meanwhile (wait() for them)."""

    def __init__(self, address, pushing):
        self.address, self._pushing, self.errors = address, pushing, []

    def wait(self, timeout=120):
        self._pushing.join(timeout)
        assert not self._pushing.is_alive(), "pushing the images took too long"
        assert not self.errors, self.errors


@pytest.fixture
def registry(tmp_path, docker_client, busybox_image, base_image):
    """A docker-registry of the test's own to hold journey/web:1.0, journey/web:1.1 and
    nullops/http-wait:1.0 (untagged locally again: the agent pulls them). The images are built
    and pushed in a thread while the admin fills the forms, which need only the address."""
    folder = tmp_path / "registry"
    folder.mkdir()
    targets = [f"journey/web:{tag}" for tag in WEB_TAGS] + ["nullops/http-wait:1.0"]
    with open_registry(folder) as address:
        def push_all():
            try:
                sources = {f"journey/web:{tag}": _web_image(docker_client, tmp_path / f"web-{tag}", tag)
                           for tag in WEB_TAGS}
                sources["nullops/http-wait:1.0"] = build(docker_client, "http-wait", base_image)
                for target in targets:
                    push(docker_client, sources[target], *f"{address}/{target}".rsplit(":", 1))
            except Exception as exc:  # noqa: BLE001 - reported by wait()
                registry.errors.append(exc)

        registry = Registry(address, threading.Thread(target=push_all, name="push", daemon=True))
        registry._pushing.start()
        try:
            yield registry
        finally:
            registry._pushing.join(120)
            for target in targets:  # what the agent pulled
                try:
                    docker_client.images.remove(f"{address}/{target}", noprune=True)
                except Exception:  # noqa: BLE001 - never pulled, or still in use
                    pass


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"journey-{name}.png", full_page=True)


def _status(page, text):
    expect(page.get_by_role("status")).to_contain_text(text, timeout=15_000)  # a form posted and answered


# --- the admin, through the UI ---------------------------------------------------------------
def _admin_builds_the_catalog(page, registry_address, project_name):
    page.get_by_role("navigation").get_by_role("link", name="Registries").click()
    form = page.locator("form", has=page.get_by_role("button", name="Add registry"))
    form.locator("[name=name]").fill("journey")
    form.locator("[name=url]").fill(f"http://{registry_address}")
    form.get_by_role("button", name="Add registry").click()
    _status(page, "Registry journey added.")

    page.get_by_role("navigation").get_by_role("link", name="Services").click()
    page.get_by_role("button", name="Add service").click()
    page.locator("[name=name]").fill("web")
    page.locator("[name=registry_id]").select_option(label="journey")
    page.locator("[name=image]").fill("journey/web")
    page.get_by_label("Selectable: users choose a tag when they deploy").check()
    page.locator("[name=tag_pattern]").fill("1.*")
    page.locator("[name=ports]").fill("8000")
    page.locator("[name=exposed_ports]").fill("8000")
    page.locator("[name=health_check]").fill('{"type": "http", "port": 8000, "path": "/"}')
    page.get_by_role("button", name="Add service").click()
    _status(page, "Service web added.")

    page.get_by_role("navigation").get_by_role("link", name="Plugins").click()
    page.get_by_role("button", name="Add plugin").click()
    page.locator("[name=name]").fill("http-wait")
    page.locator("[name=registry_id]").select_option(label="journey")
    page.locator("[name=image]").fill("nullops/http-wait")
    page.locator("[name=tag]").fill("1.0")
    page.locator("[name=params_schema]").fill(HTTP_WAIT_SCHEMA)
    page.locator("[name=cpus]").fill("0.25")
    page.locator("[name=memory_mb]").fill("64")
    page.locator("[name=timeout_s]").fill("60")
    page.get_by_label("Joins the deployment's network").check()
    page.get_by_role("button", name="Add plugin").click()
    _status(page, "Plugin http-wait added; every enabled node pulls its image.")

    page.get_by_role("banner").get_by_role("link", name="Projects").click()
    page.get_by_label("Name", exact=True).fill(project_name)
    page.get_by_label("CPUs per deployment").fill("1")
    page.get_by_label("Memory per deployment (MB)").fill("256")
    page.locator("form", has=page.get_by_label("CPUs per deployment")).get_by_role("button").click()
    _status(page, f"Project {project_name} created.")
    summary = page.get_by_test_id("project-summary")
    expect(summary).to_contain_text("256 MB")
    page.get_by_label("Secret name").fill("API_TOKEN")
    page.get_by_label("Value", exact=True).fill("tok-journey-42")
    page.get_by_role("button", name="Add secret").click()
    _status(page, "Secret API_TOKEN added.")
    return int(re.search(r"/projects/(\d+)", page.url)[1])


def _admin_grants(page, project_name, environment_name):
    for team, member, level in (("SE Team", "se-bob", "Full Access"), ("QA Team", "qa-anna", "Read-Only")):
        page.goto("/teams")
        page.get_by_label("Team name").fill(team)
        page.get_by_role("button", name="Create team").click()
        _status(page, f"Team {team} created.")
        page.get_by_label("User to add").select_option(label=member)
        page.get_by_role("button", name="Add member").click()
        expect(page.get_by_role("status")).to_contain_text(member)
        for target in (f"Project {project_name}", f"Environment {environment_name}"):
            page.get_by_label("Project or environment").select_option(label=target)
            page.get_by_label("Access", exact=True).select_option(label=level)
            page.get_by_role("button", name="Grant", exact=True).click()
            expect(page.get_by_role("status")).to_contain_text(level)


def _admin_draws_the_pipeline(page, project_id):
    page.goto(f"/projects/{project_id}")
    _shot(page, "project")
    page.get_by_role("link", name="Pipeline").first.click()
    editor = page.get_by_test_id("editor")
    canvas = editor.locator(".react-flow__pane")
    nodes, edges = editor.locator(".react-flow__node"), editor.locator(".react-flow__edge")
    panel = page.get_by_role("complementary", name="Selected element")

    # Drag the service and the plugin from the palette, connect the service to the plugin.
    page.get_by_test_id("palette-service-web").drag_to(canvas, target_position={"x": 110, "y": 120})
    page.get_by_test_id("palette-plugin-http-wait").drag_to(canvas, target_position={"x": 380, "y": 200})
    expect(nodes).to_have_count(2)
    expect(panel.get_by_role("heading", name="Plugin step http-wait")).to_be_visible()
    _rename(panel, "wait")
    expect(page.get_by_test_id("node-wait")).to_be_visible()
    _connect(page, "web", "wait")
    expect(edges).to_have_count(1)

    # The web gets the project's secret, from the references the form offers.
    page.get_by_test_id("node-web").click()
    expect(panel.locator("datalist option[value='${secrets.API_TOKEN}']")).to_have_count(1)
    panel.get_by_role("button", name="Add variable").click()
    panel.get_by_label("Variable 1 name").fill("API_TOKEN")
    panel.get_by_label("Variable API_TOKEN value").fill("${secrets.API_TOKEN}")

    # The plugin's form from its schema; a bad url is refused on the node and the field.
    page.get_by_test_id("node-wait").click()
    url = panel.get_by_label("url")
    expect(url).to_have_attribute("aria-required", "true")
    for offered in ("url", "host", "port"):
        expect(panel.locator(f"datalist option[value='${{services.web.{offered}}}']")).to_have_count(1)
    url.fill("ftp://web")
    page.get_by_role("button", name="Save as version 1").click()
    expect(page.get_by_test_id("editor-status")).to_contain_text("Not saved")
    expect(page.get_by_test_id("node-wait")).to_have_class(RED)
    expect(page.get_by_test_id("node-web")).not_to_have_class(RED)
    url_field = panel.locator("[data-field='params.url']")
    expect(url_field.get_by_test_id("field-error")).to_contain_text("does not match")
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(nodes).to_have_count(2)
    expect(edges).to_have_count(1)
    _shot(page, "pipeline-editor-refused")
    # ${services.web.url} is the ingress's address (docs/plugins.md); inside the deployment's
    # network the plugin reaches the container by its host and port.
    url.fill(WEB_INSIDE)
    expect(url_field.get_by_test_id("field-error")).to_have_count(0)
    expect(page.get_by_test_id("node-wait")).not_to_have_class(RED)
    panel.get_by_label("timeout_s").fill("30")
    page.get_by_label("Comment").fill("web, then wait for it")
    page.get_by_role("button", name="Save as version 1").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 1 saved.")

    # A node added (the keyboard's Add button), connected by its handles, saved as version 2.
    page.get_by_role("button", name="Add plugin http-wait").click()
    expect(nodes).to_have_count(3)
    _rename(panel, "smoke")
    expect(page.get_by_test_id("node-smoke")).to_be_visible()
    panel.get_by_label("url").fill(f"{WEB_INSIDE}/index.html")
    panel.get_by_label("body_contains").fill("journey web")
    panel.get_by_label("timeout_s").fill("30")
    page.get_by_role("button", name="Tidy layout").click()  # the added node off the others
    page.wait_for_timeout(300)  # the layout's move settles before a handle is pressed
    _connect(page, "wait", "smoke")
    expect(edges).to_have_count(2)
    page.get_by_role("button", name="Tidy layout").click()  # elkjs: left to right, in running order
    page.wait_for_function("""() => {
      const x = (id) => document.querySelector(`[data-testid=node-${id}]`).getBoundingClientRect().x;
      return x("web") < x("wait") && x("wait") < x("smoke");
    }""")
    page.get_by_label("Comment").fill("a smoke check added")
    page.get_by_role("button", name="Save as version 2").click()
    expect(page.get_by_test_id("editor-status")).to_have_text("Version 2 saved.")
    expect(page.get_by_test_id("save-problems")).to_have_count(0)
    _shot(page, "pipeline-editor")


def test_the_pipeline_an_admin_draws_is_deployed_watched_and_managed_by_a_writer_and_seen_by_a_reader(
        app, live_server, browser_login, admin, make_user, registry, ingress, agents, add_node,  # noqa: F811
        controller, environment, docker_client, monkeypatch):  # noqa: F811
    started = time.monotonic()
    make_user("se-bob")
    make_user("qa-anna")
    # The agent's report of free CPU on this busy shared machine may be near zero, which
    # admission rightly refuses; its reports are ignored: the node's allocation alone decides.
    monkeypatch.setattr(admission, "FRESH_FOR", timedelta(0))
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN, name="node-1")
    controller()
    project_name = "journey-shop"

    page = browser_login("admin")
    page.set_viewport_size(LAPTOP)
    project_id = _admin_builds_the_catalog(page, registry.address, project_name)
    _admin_grants(page, project_name, environment.name)
    _admin_draws_the_pipeline(page, project_id)
    db.session.expire_all()
    version = db.session.query(PipelineVersion).filter_by(project_id=project_id, number=2).one()
    steps = {s["id"]: s for s in version.resolved["steps"]}
    assert sorted(steps) == ["smoke", "wait", "web"]
    assert steps["wait"]["params"]["url"] == WEB_INSIDE
    assert steps["smoke"]["depends_on"] == ["wait"] and steps["wait"]["depends_on"] == ["web"]
    wait_for_status(node_id, "online")
    registry.wait()
    page.goto(f"/environments/{environment.id}")
    _shot(page, "environment")
    page.goto(f"/nodes/{node_id}")
    expect(page.get_by_role("heading", name="node-1", level=1)).to_be_visible()
    _shot(page, "node")
    admin_done = time.monotonic()

    # --- the writer deploys version 2 with a chosen tag and watches it come up ---------------
    writer = browser_login("se-bob")
    writer.set_viewport_size(LAPTOP)
    writer.get_by_role("navigation").get_by_role("link", name="Deployments").click()
    writer.get_by_role("button", name="New deployment").click()
    writer.locator("#project_id").select_option(label=project_name)
    tag = writer.locator("select[name=tag-web]")
    expect(tag.locator("option[value='1.0']")).to_have_count(1, timeout=RUN_MS // 2)
    tag.select_option("1.1")
    writer.get_by_label("Deployment name").fill("pr-42")
    _shot(writer, "new-deployment")
    writer.get_by_role("button", name="Deploy").click()
    writer.wait_for_url(re.compile(r"/deployments/\d+$"))
    deployment_id = int(writer.url.rsplit("/", 1)[1])
    writer.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    graph = writer.get_by_test_id("deployment-graph")
    expect(graph.locator(".react-flow__node")).to_have_count(3)
    expect(graph.locator(".react-flow__edge")).to_have_count(2)
    live = writer.locator("#deployment-live")
    try:
        expect(graph.get_by_test_id("node-web")).to_have_attribute("data-state", "ready", timeout=RUN_MS)
        for plugin in ("wait", "smoke"):
            expect(graph.get_by_test_id(f"node-{plugin}")).to_have_attribute("data-state", "done",
                                                                             timeout=RUN_MS)
        expect(live.get_by_test_id("deployment-status")).to_have_text("ready", timeout=RUN_MS)
    except AssertionError:
        row = deployment_row(deployment_id)
        raise AssertionError(f"deployment {row.status}: {row.status_message}") from None
    assert writer.evaluate("window.__sameDocument") is True  # no reload happened
    ready_at = time.monotonic()
    row = deployment_row(deployment_id)
    assert (row.pipeline_version_id, row.tags) == (version.id, {"web": "1.1"})
    assert (row.cpus, row.memory_mb) == (1, 256)  # the project's limits
    ours = [f"org.nullops.deployment=dep-{deployment_id}", f"org.nullops.node={agent.node_id}"]
    [container] = docker_client.containers.list(filters={"label": [*ours, "org.nullops.step=web"]})
    assert container.attrs["Config"]["Image"] == f"{registry.address}/journey/web:1.1"
    assert "API_TOKEN=tok-journey-42" in container.attrs["Config"]["Env"]

    # The service URL through Caddy answers with the chosen tag's page.
    link = writer.get_by_test_id("url-web")
    expect(link).to_have_text(f"http://web.pr-42.{environment.name}.localhost:{ingress.http_port}")
    with writer.expect_popup() as opened:
        link.click()
    service = opened.value
    expect(service.locator("body")).to_have_text("journey web 1.1", timeout=RUN_MS // 4)
    service.close()

    # Follow the web's log: a line it prints after the follow started arrives.
    writer.locator("details.logs-panel summary", has_text="web").click()
    logs = writer.get_by_test_id("logs-web")
    expect(logs).to_contain_text("web-started")
    panel = writer.locator("details.logs-panel", has_text="web")
    panel.get_by_role("button", name="Follow").click()
    expect(panel.get_by_role("button", name="Stop following")).to_be_visible()
    expect(logs).to_contain_text("web-started")
    line = make_it_print(docker_client, deployment_id, node_id=agent.node_id)
    expect(logs).to_contain_text(line, timeout=RUN_MS // 4)
    panel.get_by_role("button", name="Stop following").click()

    # CPU and memory charts drawn from the agent's figures, limits from the project.
    for chart in ("cpu", "memory"):
        drawn = writer.get_by_test_id(f"{chart}-web")
        expect(drawn).to_have_attribute("data-points", re.compile(r"^[2-9]|\d\d"), timeout=RUN_MS // 2)
        expect(drawn.locator("canvas")).to_have_count(1)
    expect(writer.get_by_test_id("memory-now-web")).to_have_text(re.compile(r"^now \d+\.\d MiB of 256$"))
    _shot(writer, "deployment")
    charts_at = time.monotonic()
    tab = writer.context.new_page()  # the writer's overview, in a second tab
    tab.set_viewport_size(LAPTOP)
    tab.goto("/")
    expect(tab.locator("main")).to_contain_text("pr-42")
    _shot(tab, "overview")
    tab.close()
    page.get_by_role("navigation").get_by_role("link", name="Deployments").click()
    expect(page.locator("main")).to_contain_text("pr-42")
    _shot(page, "deployments")

    # --- the reader sees it all without one action; a hand-made post is refused ---------------
    reader = browser_login("qa-anna")
    reader.set_viewport_size(LAPTOP)
    reader.goto(f"/deployments/{deployment_id}")
    expect(reader.get_by_test_id("deployment-graph").get_by_test_id("node-web")).to_have_attribute(
        "data-state", "ready", timeout=RUN_MS // 4)
    expect(reader.get_by_test_id("health-web")).to_have_text("ready")
    expect(reader.locator("details.logs-panel")).to_have_count(1)
    expect(reader.locator("#deployment-live form")).to_have_count(0)
    expect(_action_buttons(reader)).to_have_count(0)
    expect(reader.get_by_role("button", name=re.compile("Extend|Delete|Retry|Clone|Cancel"))).to_have_count(0)
    _shot(reader, "deployment-read-only")
    csrf = reader.locator('meta[name="csrf-token"]').get_attribute("content")
    for action, form in (("extend", {}), ("delete", {}), ("clone", {"name": "mine"})):
        answer = reader.request.post(f"/deployments/{deployment_id}/{action}", max_redirects=0,
                                     form={"csrf_token": csrf, **form}, headers={"Origin": live_server})
        assert answer.status == 403, (action, answer.status)
    assert deployment_row(deployment_id).status == "ready"
    reader.close()

    # --- the writer extends, clones and deletes ------------------------------------------------
    active = deployment_row(deployment_id).last_activity_at
    live.get_by_role("button", name="Extend").click()
    _status(writer, "Deployment pr-42 extended")
    assert deployment_row(deployment_id).last_activity_at > active
    writer.get_by_label("Name of the clone").fill("pr-42-copy")
    writer.get_by_role("button", name="Clone", exact=True).click()
    _status(writer, "Deployment pr-42-copy created as a clone of pr-42")
    clone = db.session.query(Deployment).filter_by(name="pr-42-copy").one()
    assert (clone.pipeline_version_id, clone.tags) == (version.id, {"web": "1.1"})
    writer.go_back()
    writer.wait_for_url(f"**/deployments/{deployment_id}")
    dialogs = []
    writer.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    live.get_by_role("button", name="Delete").click()
    assert dialogs and dialogs[0].startswith("Delete deployment pr-42?")
    _status(writer, "Deployment pr-42 is being deleted")
    expect(live.get_by_test_id("deployment-status")).to_have_text("deleted", timeout=RUN_MS)
    expect(graph.get_by_test_id("node-web")).to_have_attribute("data-state", "removed")
    expect(_action_buttons(writer)).to_have_count(0)
    left = docker_client.containers.list(all=True, filters={"label": ours})
    assert left == [], [(c.name, c.status, c.labels) for c in left]

    # The rest of the main pages, after the story (the audit log tells it).
    writer.close()
    page.goto("/projects")
    expect(page.locator(f"tr[data-project={project_name}]")).to_contain_text("1 CPUs, 256 MB")
    _shot(page, "projects")
    page.goto("/audit")
    expect(page.locator("main")).to_contain_text("pr-42")
    _shot(page, "audit-log")
    page.goto("/settings")
    _shot(page, "settings")
    print(f"journey: admin {admin_done - started:.1f} s, deployed {ready_at - admin_done:.1f} s, "
          f"url+log+charts {charts_at - ready_at:.1f} s, the rest {time.monotonic() - charts_at:.1f} s")
    assert db.session.get(Project, project_id) is not None
