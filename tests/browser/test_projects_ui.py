"""The project pages through a real browser: an admin creates a project with CPU and memory
limits, adds a secret and grants a team Read-Only, seeing a flash for each; a member of that
team then sees the project without a single control that changes it. Deleting asks first and is
refused while the project has deployments. The pages fit a laptop
(1366×768) and a phone (390 wide) without the page scrolling sideways."""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models.types import utcnow
from app.services import teams
from tests.access.deployments import add_deployment, add_node, pipeline_version

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def _too_wide(page):
    """What sticks out past the window's right edge (wide tables scroll inside their figure,
    the navigation wraps): nothing, when the page fits."""
    return page.evaluate("""() => document.documentElement.scrollWidth <= window.innerWidth ? [] :
        [...document.querySelectorAll('body *')]
        .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
        .map((el) => `${el.tagName}.${el.className} ${Math.round(el.getBoundingClientRect().right)}`)
        .slice(0, 8)""")


def test_admin_creates_a_project_with_limits_a_secret_and_a_grant_and_a_reader_sees_it(
        live_server, browser_login, admin, make_user):
    reader = make_user("qa-anna")
    qa = teams.create(None, "QA Team")
    teams.add_member(None, qa, reader)
    SHOTS.mkdir(parents=True, exist_ok=True)

    page = browser_login("admin")
    page.set_viewport_size(LAPTOP)
    page.get_by_role("banner").get_by_role("link", name="Projects").click()
    expect(page.get_by_role("heading", name="Projects", level=1)).to_be_visible()
    # The form by keyboard alone: each field found by its label, Tab to the next, Enter submits.
    page.get_by_label("Name", exact=True).focus()
    page.keyboard.type("shop")
    page.keyboard.press("Tab")
    page.keyboard.type("the shop")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("2048")
    page.keyboard.press("Tab")
    page.keyboard.type("120")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/projects/\d+$"))
    expect(page.get_by_role("heading", name="shop", level=1)).to_be_visible()
    expect(page.get_by_role("status")).to_have_text(
        "Project shop created. Add its secrets and grant teams access below.")
    summary = page.get_by_test_id("project-summary")
    expect(summary).to_contain_text("2")
    expect(summary).to_contain_text("2048 MB")
    expect(summary).to_contain_text("after 2 hours of inactivity")

    page.get_by_label("Secret name").fill("DB_PASSWORD")
    page.get_by_label("Value", exact=True).fill("pw-browser-123")
    page.get_by_role("button", name="Add secret").click()
    expect(page.get_by_role("status")).to_have_text("Secret DB_PASSWORD added.")
    expect(page.locator("tr[data-secret=DB_PASSWORD]")).to_be_visible()
    assert "pw-browser-123" not in page.content()

    page.get_by_label("Team", exact=True).select_option(label="QA Team")
    page.get_by_label("Access", exact=True).select_option(label="Read-Only")
    page.get_by_role("button", name="Grant access").click()
    expect(page.get_by_role("status")).to_have_text("Team QA Team granted Read-Only on shop.")
    expect(page.locator("tr[data-grant='QA Team']")).to_be_visible()
    assert _too_wide(page) == []
    page.screenshot(path=SHOTS / "project-admin.png", full_page=True)
    page.set_viewport_size(PHONE)
    assert _too_wide(page) == []
    page.screenshot(path=SHOTS / "project-admin-phone.png", full_page=True)

    page.get_by_role("banner").get_by_role("link", name="Projects").click()
    expect(page.locator("tr[data-project=shop]")).to_contain_text("2 CPUs, 2048 MB")
    assert _too_wide(page) == []
    page.screenshot(path=SHOTS / "projects-phone.png", full_page=True)

    qa_page = browser_login("qa-anna")
    qa_page.set_viewport_size(LAPTOP)
    qa_page.get_by_role("banner").get_by_role("link", name="Projects").click()
    expect(qa_page.locator("tr[data-project=shop]")).to_contain_text("Read-Only")
    qa_page.locator("tr[data-project=shop]").get_by_role("link", name="shop", exact=True).click()
    expect(qa_page.get_by_role("heading", name="shop", level=1)).to_be_visible()
    expect(qa_page.get_by_test_id("project-summary")).to_contain_text("Read-Only")
    expect(qa_page.get_by_role("link", name="Pipeline")).to_be_visible()
    expect(qa_page.get_by_role("link", name="Deployments of shop")).to_be_visible()
    # Not one control that changes the project: the only button is the navigation's Log out.
    expect(qa_page.locator("main button, main input, main select, main textarea")).to_have_count(0)
    expect(qa_page.get_by_text("DB_PASSWORD")).to_have_count(0)
    qa_page.screenshot(path=SHOTS / "project-read-only.png", full_page=True)


def test_deleting_a_project_asks_first_and_is_refused_while_it_has_deployments(
        live_server, browser_login, spec_example):
    project = spec_example["project"]
    version = pipeline_version(project, [])
    node = add_node(spec_example["environment"], "node-1")
    deployment = add_deployment(version, spec_example["environment"], node, "pr-1")
    page = browser_login("admin")
    page.goto(f"/projects/{project.id}")
    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        if len(asked) == 1:
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("dialog", answer)
    # By keyboard: focus the button, Enter; the first answer is Cancel, nothing happens.
    page.get_by_role("button", name="Delete project").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="shop", level=1)).to_be_visible()
    assert asked == ["Delete project shop with its pipeline versions, secrets and grants?"]
    page.get_by_role("button", name="Delete project").click()
    expect(page.get_by_role("alert")).to_have_text(
        "project shop has 1 deployment(s) that are not deleted yet: delete them first")
    expect(page.get_by_role("link", name="Deployments of shop")).to_be_visible()

    deployment.status, deployment.deleted_at = "deleted", utcnow()
    db.session.commit()
    page.get_by_role("button", name="Delete project").click()
    page.wait_for_url(re.compile(r"/projects$"))
    expect(page.get_by_role("status")).to_have_text("Project shop deleted.")
    expect(page.locator("tr[data-project=shop]")).to_have_count(0)
