"""The catalog pages through a real browser: an admin adds a registry and a service, imports a
pipeline as YAML and sees version 1 listed."""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import Project
from app.services import catalog, pipelines
from tests.access.pipelines import definition, make_catalog

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")
PIPELINE = """comment: first import
nodes:
  - id: web
    service: shop-web
    env: {GREETING: "hello; $(id)"}
edges: []
"""


def test_admin_adds_a_registry_and_a_service_and_imports_a_pipeline(live_server, browser_login, admin):
    project = Project(name="shop")
    db.session.add(project)
    db.session.commit()
    page = browser_login("admin")

    page.get_by_role("navigation").get_by_role("link", name="Registries").click()
    expect(page.get_by_role("heading", name="Registries", level=1)).to_be_visible()
    form = page.locator("form", has=page.get_by_role("button", name="Add registry"))
    form.locator("[name=name]").fill("team")
    form.locator("[name=url]").fill("http://127.0.0.1:5999")
    form.get_by_role("button", name="Add registry").click()
    page.wait_for_url(re.compile(r"/registries/\d+$"))
    expect(page.get_by_role("heading", name="team", level=1)).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Registry team added.")

    page.get_by_role("navigation").get_by_role("link", name="Services").click()
    page.get_by_role("button", name="Add service").click()
    page.wait_for_url(re.compile(r"/services/new$"))
    page.locator("[name=name]").fill("shop-web")
    page.locator("[name=registry_id]").select_option(label="team")
    page.locator("[name=image]").fill("team/shop-web")
    page.locator("[name=tag]").fill("1.4")
    page.locator("[name=ports]").fill("8000")
    page.locator("[name=exposed_ports]").fill("8000")
    page.locator("[name=env]").fill("LOG_LEVEL=info")
    page.get_by_role("button", name="Add service").click()
    page.wait_for_url(re.compile(r"/services/\d+$"))
    expect(page.get_by_role("status")).to_have_text("Service shop-web added.")
    page.get_by_role("link", name="Services").first.click()
    expect(page.locator("tr[data-service=shop-web]")).to_contain_text("team/shop-web")

    page.get_by_role("link", name="Overview").click()
    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("heading", name="Pipeline of shop", level=1)).to_be_visible()
    page.locator("[name=yaml]").fill(PIPELINE)
    page.get_by_role("button", name="Import as a new version").click()
    expect(page.get_by_role("status")).to_have_text("Pipeline version 1 of shop saved.")
    row = page.locator("tr[data-version='1']")
    expect(row).to_contain_text("admin")
    expect(row).to_contain_text("first import")
    expect(page.get_by_test_id("latest-yaml")).to_contain_text("service: shop-web")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "pipeline-imported.png", full_page=True)


def test_the_pipeline_page_draws_the_latest_version_as_a_graph(live_server, browser_login, admin):
    project = Project(name="shop")
    db.session.add(project)
    db.session.commit()
    catalog.put_secret(admin, project, "DB_PASSWORD", "pw-123")
    make_catalog()
    version = pipelines.save_version(admin, project, definition(), "drawn")
    db.session.commit()
    page = browser_login("admin")
    page.goto(f"/projects/{project.id}/pipeline")
    canvas = page.get_by_test_id("pipeline-editor")
    expect(canvas.locator(".react-flow__node")).to_have_count(len(version.definition["nodes"]))
    expect(canvas.locator(".react-flow__edge")).to_have_count(len(version.definition["edges"]))
