"""Environments and nodes through a real browser: an admin creates an environment, adds a node
and sees its token and docker run command once; rotation and revocation ask first."""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from agent.protocol import verifier_for
from app.extensions import db
from app.models import Node
from app.services import nodes

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/nullops-shots")


def _node():
    db.session.expire_all()
    return db.session.scalar(db.select(Node))


def test_admin_adds_a_node_and_sees_token_and_command_once(live_server, browser_login, admin):
    page = browser_login("admin")
    page.get_by_role("navigation").get_by_role("link", name="Environments").click()
    expect(page.get_by_role("heading", name="Environments", level=1)).to_be_visible()
    page.get_by_label("Name", exact=True).fill("staging")
    page.get_by_label("Base domain").fill("staging.example.com")
    page.get_by_label("Auto-cleanup after (minutes of inactivity)").fill("1440")
    page.get_by_role("button", name="Create environment").click()
    page.wait_for_url(re.compile(r"/environments/\d+$"))
    expect(page.get_by_role("heading", name="staging", level=1)).to_be_visible()
    expect(page.get_by_text("staging.example.com").first).to_be_visible()
    environment_url = page.url

    page.get_by_placeholder("Node name, e.g. node-1").fill("node-1")
    page.get_by_placeholder("Host name or IP, e.g. 10.0.0.5").fill("10.0.0.5")
    page.get_by_role("button", name="Add node").click()
    page.wait_for_url(re.compile(r"/nodes/\d+$"))
    token = page.get_by_test_id("node-token").inner_text().strip()
    command = page.get_by_test_id("node-command").inner_text().strip()
    assert len(token) >= 43 and " " not in token
    assert command == nodes.agent_command(_node()) and token not in command
    assert nodes.reveal_verifier(_node()) == verifier_for(token)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "node-added.png", full_page=True)

    page.reload()
    expect(page.get_by_role("heading", name="node-1", level=1)).to_be_visible()
    expect(page.get_by_test_id("node-token")).to_have_count(0)
    expect(page.get_by_test_id("node-command")).to_have_count(0)
    assert token not in page.content()

    page.goto(environment_url)
    row = page.get_by_role("row").filter(has_text="node-1")
    expect(row.get_by_test_id("node-status")).to_have_text("pending")
    expect(row).to_contain_text("waiting for the first connection")
    assert token not in page.content()

    # Rotation asks first; cancelling keeps the token.
    row.get_by_role("link", name="node-1").click()
    messages = []

    def dismiss(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Rotate token").click()
    expect(page.get_by_test_id("node-token")).to_have_count(0)
    assert messages and "The old token stops working at once" in messages[0]
    assert nodes.reveal_verifier(_node()) == verifier_for(token)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Rotate token").click()
    new_token = page.get_by_test_id("node-token").inner_text().strip()
    assert new_token != token
    expect(page.get_by_test_id("node-token-once")).to_contain_text("by hand")
    assert nodes.reveal_verifier(_node()) == verifier_for(new_token)
    page.reload()
    expect(page.get_by_test_id("node-token")).to_have_count(0)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    badge = page.get_by_role("heading", level=1).get_by_test_id("node-status")
    expect(badge).to_have_text("revoked")
    assert _node().verifier_ciphertext is None


def test_status_badges_are_coloured_by_meaning(live_server, browser_login, spec_example):
    ex = spec_example
    for name, status in (("node-a", "online"), ("node-b", "offline"), ("node-c", "untrusted"),
                         ("node-d", "disabled")):
        node, _token, _command = nodes.add(ex["admin"], ex["environment"], name, "10.0.0.5")
        node.status = status
    db.session.commit()

    reader = browser_login("qa-anna")
    reader.goto(f"/environments/{ex['environment'].id}")
    colours = {}
    for status in ("online", "offline", "untrusted", "disabled"):
        badge = reader.locator(f".status-{status}")
        expect(badge).to_have_text(status)
        colours[status] = badge.evaluate("b => getComputedStyle(b).color")
    assert len(set(colours.values())) == 4, colours
    # Members see the nodes but not their addresses, and get no admin forms.
    assert "10.0.0.5" not in reader.content()
    expect(reader.get_by_role("button", name="Add node")).to_have_count(0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    reader.screenshot(path=SHOTS / "environment.png", full_page=True)
