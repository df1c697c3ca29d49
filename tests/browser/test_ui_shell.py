"""The UI shell through a real browser: login, teams and grants, admin-only pages, API tokens."""
import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from app.models import Project
from app.services import catalog

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")


def _section(page, heading):
    return page.locator("section").filter(has=page.get_by_role("heading", name=heading, exact=True))


def _api_me(base_url, token):
    with requests.Session() as http:
        http.trust_env = False  # no proxy between us and 127.0.0.1
        return http.get(f"{base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def test_login_wrong_password_then_login_and_logout(page, live_server, make_user):
    make_user("anna")

    page.goto("/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page).to_have_title(re.compile("Log in"))

    page.get_by_label("Username").fill("anna")
    page.get_by_label("Password").fill("not-the-password-1")
    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as post:
        page.get_by_role("button", name="Log in").click()
    assert post.value.status == 401
    expect(page.get_by_role("alert")).to_have_text("wrong username or password")
    assert page.url == f"{live_server}/login"
    expect(page.get_by_test_id("nav-settings")).to_have_count(0)

    page.get_by_label("Username").fill("anna")
    page.get_by_label("Password").fill("correct-horse-battery-9")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server}/")
    expect(page.get_by_role("heading", name="Welcome, anna")).to_be_visible()
    expect(page.get_by_test_id("nav-settings")).to_have_text("anna")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{live_server}/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_test_id("nav-settings")).to_have_count(0)

    page.goto("/")
    assert re.fullmatch(rf"{re.escape(live_server)}/login(\?next=.*)?", page.url), page.url
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def test_admin_grants_team_read_only_and_member_sees_project(
    live_server, browser_login, admin, make_user
):
    catalog.create(None, Project, "shop")
    make_user("qa-anna")
    make_user("nobody")

    page = browser_login("admin")
    page.get_by_role("link", name="Teams").click()
    expect(page.get_by_role("heading", name="Teams", exact=True)).to_be_visible()
    page.get_by_placeholder("Team name, e.g. QA Team").fill("QA Team")
    page.get_by_placeholder("Description (optional)").fill("testers")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url(re.compile(r"/teams/\d+$"))
    expect(page.get_by_role("heading", name="QA Team", level=1)).to_be_visible()

    members = _section(page, "Members")
    expect(members).to_contain_text("No members yet.")
    members.locator("select[name=user_id]").select_option(label="qa-anna")
    members.get_by_role("button", name="Add member").click()
    expect(members.get_by_role("cell", name="qa-anna", exact=True)).to_be_visible()
    expect(members).not_to_contain_text("No members yet.")

    grants = _section(page, "Grants")
    expect(grants).to_contain_text("This team has no grants yet.")
    grants.locator("select[name=target]").select_option(label="Project shop")
    grants.locator("select[name=level]").select_option(label="Read-Only")
    grants.get_by_role("button", name="Grant", exact=True).click()
    row = grants.get_by_role("row").filter(has_text="Project shop")
    expect(row).to_have_count(1)
    expect(row.get_by_role("cell").nth(1)).to_have_text("Read-Only")

    page.get_by_role("link", name="Teams").click()
    expect(page.get_by_role("row").filter(has_text="QA Team")).to_contain_text("1")

    reader = browser_login("qa-anna")
    shop = _section(reader, "Projects").get_by_role("listitem").filter(has_text="shop")
    expect(shop).to_have_count(1)
    expect(shop.locator(".badge")).to_have_text("Read-Only")

    outsider = browser_login("nobody")
    projects = _section(outsider, "Projects")
    expect(projects).to_contain_text("No projects you can see yet.")
    expect(projects.get_by_role("listitem")).to_have_count(0)


def test_non_admin_gets_no_user_list(live_server, browser_login, admin, make_user):
    make_user("anna")
    make_user("zed-secret")

    page = browser_login("anna")
    nav = page.get_by_role("navigation")
    expect(nav.get_by_role("link", name="Teams")).to_be_visible()
    expect(nav.get_by_role("link", name="Users", exact=True)).to_have_count(0)

    response = page.goto("/admin/users")
    assert response.status == 403
    expect(page.get_by_role("table")).to_have_count(0)
    assert "zed-secret" not in page.content()
    expect(page.get_by_role("link", name="Users", exact=True)).to_have_count(0)

    # The same page does list users for an admin, so the checks above can fail.
    boss = browser_login("admin")
    boss.get_by_role("navigation").get_by_role("link", name="Users", exact=True).click()
    expect(boss.get_by_role("cell", name="zed-secret", exact=True)).to_be_visible()


def test_api_token_shown_once_works_and_revokes(live_server, browser_login, make_user):
    make_user("anna")

    page = browser_login("anna")
    page.get_by_test_id("nav-settings").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    page.get_by_placeholder("Token name, e.g. ci-pipeline").fill("ci-pipeline")
    page.get_by_role("button", name="Create token").click()
    shown = page.get_by_test_id("new-token")
    expect(shown).to_be_visible()
    token = shown.inner_text().strip()
    assert len(token) >= 20 and " " not in token

    page.reload()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    assert token not in page.content()
    row = page.get_by_role("row").filter(has_text="ci-pipeline")
    expect(row).to_contain_text("active")

    me = _api_me(live_server, token)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "anna"

    # Cancelling the confirmation keeps the token.
    messages = []

    def dismiss(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("active")
    assert messages and "Revoke token ci-pipeline?" in messages[0]
    assert _api_me(live_server, token).status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_have_text("Token 'ci-pipeline' revoked.")
    expect(page.get_by_role("row").filter(has_text="ci-pipeline")).to_contain_text("revoked")
    expect(page.get_by_role("row").filter(has_text="ci-pipeline").get_by_role("button")).to_have_count(0)

    gone = _api_me(live_server, token)
    assert gone.status_code == 401, gone.text


def test_screenshots_of_overview_and_team_page(live_server, browser_login, spec_example):
    SHOTS.mkdir(parents=True, exist_ok=True)
    qa_id = spec_example["qa"].id
    failed = []

    def watch(page):
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        return page

    reader = browser_login("qa-anna")
    watch(reader).reload()
    expect(_section(reader, "Projects").get_by_role("listitem").filter(has_text="shop")).to_have_count(1)
    # pico.css is loaded and lays the nav out in a row, brand left, links right.
    assert reader.evaluate("getComputedStyle(document.querySelector('nav')).display") == "flex"
    reader.screenshot(path=SHOTS / "overview.png", full_page=True)

    boss = browser_login("admin")
    watch(boss).goto(f"/teams/{qa_id}")
    expect(boss.get_by_role("heading", name="QA Team", level=1)).to_be_visible()
    boss.screenshot(path=SHOTS / "team.png", full_page=True)
    # Buttons in table rows and form rows size to their label, not to the full width.
    for name in ("Add member", "Grant"):
        assert boss.get_by_role("button", name=name, exact=True).bounding_box()["width"] < 300
    assert boss.get_by_role("button", name="Remove").first.bounding_box()["width"] < 300

    assert failed == []
    for name in ("overview.png", "team.png"):
        assert (SHOTS / name).stat().st_size > 5_000
