"""Deployments through a real browser: a writer deploys a pinned-only pipeline through the form
(no agent runs, so it stays pending), watches the page follow its status, finds it in the
list and cancels it after confirming; selectable tags come from the tags route."""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app.extensions import db
from app.models import Deployment
from app.services import registries as registry_service
from app.states import move_deployment
from tests.access.deployments import (
    add_deployment,
    add_node,
    pipeline_version,
    registry,
    service_step,
)

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")


def _deployment(name):
    db.session.expire_all()
    return db.session.scalar(select(Deployment).where(Deployment.name == name))


@pytest.fixture
def shop(spec_example):
    local = registry()
    version = pipeline_version(spec_example["project"], [
        service_step("web", tag="1.4", exposed=[8000], registry_id=local.id),
        service_step("db", tag="15", exposed=[], image="postgres", registry_id=local.id)])
    node = add_node(spec_example["environment"], "node-1")
    return {**spec_example, "registry": local, "version": version, "node": node}


def test_writer_deploys_through_the_form_and_cancels_after_confirming(live_server, browser_login, shop):
    page = browser_login("se-bob")
    page.get_by_role("banner").get_by_role("link", name="Deployments").click()
    expect(page.get_by_role("heading", name="Deployments", level=1)).to_be_visible()
    page.get_by_role("button", name="New deployment").click()  # a link styled as a button
    expect(page.locator(".pinned-tag[data-step='db']")).to_have_text("db: postgres:15 (pinned)")
    expect(page.locator(".pinned-tag[data-step='web']")).to_have_text("web: team/web:1.4 (pinned)")
    page.get_by_label("Project").select_option(label="shop")
    page.get_by_label("Environment").select_option(label="staging")
    page.get_by_label("Deployment name").fill("login-fix")
    page.get_by_role("button", name="Deploy").click()

    page.wait_for_url(re.compile(r"/deployments/\d+$"))
    detail_url = page.url
    live = page.locator("#deployment-live")
    expect(live.get_by_role("heading", level=1)).to_contain_text("login-fix")
    expect(live.get_by_test_id("deployment-status")).to_have_text("pending")
    expect(live.get_by_role("link", name="http://web.login-fix.staging.localhost")).to_be_visible()
    countdown = live.get_by_test_id("countdown")
    expect(countdown).to_have_text(re.compile(r"^6d 23h 59m \d\ds$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first)  # it counts down in the page

    # The page follows the status by itself while the deployment settles.
    deployment = _deployment("login-fix")
    move_deployment(deployment, "deploying", "pulling images")
    db.session.commit()
    expect(live.get_by_test_id("deployment-status")).to_have_text("deploying")
    expect(live.get_by_test_id("status-message")).to_have_text("pulling images")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "deployment.png", full_page=True)

    page.get_by_role("banner").get_by_role("link", name="Deployments").click()
    row = page.get_by_role("row").filter(has_text="login-fix")
    expect(row.get_by_test_id("deployment-status")).to_have_text("deploying")
    expect(row).to_contain_text("se-bob")
    expect(row.get_by_role("link", name="http://web.login-fix.staging.localhost")).to_be_visible()
    page.screenshot(path=SHOTS / "deployments.png", full_page=True)
    row.get_by_role("link", name="login-fix", exact=True).click()
    page.wait_for_url(detail_url)

    # No controller runs here: the logs panel says why there are no logs.
    page.locator("details.logs-panel summary", has_text="web").click()
    expect(page.get_by_test_id("logs-web")).to_have_text(
        re.compile(r"^Logs unavailable: the controller is not reachable for live data"))

    # Cancelling asks first; dismissing keeps the deployment.
    messages = []

    def dismiss(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Cancel deployment").click()
    assert messages and messages[0].startswith("Cancel deployment login-fix?")
    expect(live.get_by_test_id("deployment-status")).to_have_text("deploying")
    assert _deployment("login-fix").status == "deploying"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel deployment").click()
    expect(page.get_by_role("status")).to_contain_text("Deployment login-fix cancelled")
    expect(live.get_by_test_id("deployment-status")).to_have_text("deleting")
    expect(page.get_by_role("button", name="Cancel deployment")).to_have_count(0)
    assert _deployment("login-fix").status == "deleting"


def test_selectable_tags_load_into_the_form_and_follow_the_project(live_server, browser_login,
                                                                   shop, monkeypatch):
    ex = shop
    pipeline_version(ex["other_project"], [service_step(
        "api", mode="selectable", pattern="features-*", exposed=[8080], registry_id=ex["registry"].id)])
    monkeypatch.setattr(registry_service, "list_tags", lambda registry, image, pattern=None:
                        ["features-login", "features-cart"])
    page = browser_login("admin")
    page.goto(f"/deployments/new?project_id={ex['project'].id}")
    expect(page.locator(".pinned-tag[data-step='db']")).to_be_visible()
    page.get_by_label("Project").select_option(label="billing")  # htmx swaps the steps in
    select = page.locator("select[name='tag-api']")
    expect(select.locator("option")).to_have_text(["features-login", "features-cart"])
    expect(page.locator(".pinned-tag")).to_have_count(0)
    select.select_option("features-cart")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "deployment-new.png", full_page=True)
    page.get_by_label("Deployment name").fill("cart")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url(re.compile(r"/deployments/\d+$"))
    expect(page.locator("[data-step='api'] code")).to_have_text("team/api:features-cart")
    assert _deployment("cart").tags == {"api": "features-cart"}


def test_the_page_rides_out_a_server_outage_and_stops_polling_once_deleted(live_server, browser_login,
                                                                           shop):
    """A page left open keeps telling the truth: while the live route fails it says so and
    tries again (backing off), catches up afterwards without a reload, and stops asking only
    once the deployment is deleted."""
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "long-lived",
                                status="ready")
    page = browser_login("se-bob")
    asked = []
    page.on("request", lambda request: asked.append(request.url) if request.url.endswith("/live") else None)
    page.goto(f"/deployments/{deployment.id}")
    page.evaluate("window.__sameDocument = true")
    live = page.locator("#deployment-live")
    note = page.get_by_test_id("live-note")
    expect(note).to_have_text(re.compile(r"^Live: last checked \d\d:\d\d:\d\d\.$"))

    live_url = f"**/api/v1/deployments/{deployment.id}/live"
    page.route(live_url, lambda route: route.fulfill(status=503, content_type="application/json",
                                                     body='{"error": {"message": "down for a moment"}}'))
    expect(note).to_have_text(re.compile(r"^Live updates interrupted \(down for a moment\); trying again "
                                         r"in \d+ s\.$"))
    move_deployment(_deployment("long-lived"), "degraded", "could not recreate web: no such image")
    db.session.commit()
    page.unroute(live_url)
    expect(live.get_by_test_id("deployment-status")).to_have_text("degraded", timeout=20_000)
    expect(page.get_by_test_id("health-web")).to_have_text("restarting")
    expect(page.get_by_test_id("health-message-web")).to_have_text("could not recreate web: no such image")
    expect(note).to_have_text(re.compile(r"^Live: last checked"))

    deployment = _deployment("long-lived")
    move_deployment(deployment, "deleting", "")
    move_deployment(deployment, "deleted", "")
    db.session.commit()
    expect(live.get_by_test_id("deployment-status")).to_have_text("deleted")
    expect(note).to_have_text("The deployment is deleted; nothing more to follow.")
    expect(page.locator("section.clone")).to_be_hidden()
    before = len(asked)
    page.wait_for_timeout(5000)  # two and a half polling periods
    assert len(asked) == before, asked[before:]
    assert page.evaluate("window.__sameDocument") is True
