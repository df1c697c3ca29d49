"""The deployment page's Follow button through a real browser: a Read-Only member follows a
real service's log (real agent, real controller, real container) and stops following."""
import pytest
from playwright.sync_api import expect

from app.extensions import db
from app.models import Grant, Team, TeamMember
from tests.controller.conftest import (  # noqa: F401 - fixtures
    add_node,
    agents,
    catalog,
    controller,
    environment,
    make_deployment,
    wait_for_deployment,
    wait_for_status,
    web_step,
)
from tests.controller.test_deployments import TOKEN
from tests.controller.test_log_follow import TALKER

pytestmark = [pytest.mark.browser, pytest.mark.docker]


def test_a_reader_follows_a_service_log_live_and_stops(
        app, live_server, browser_login, make_user, agents, add_node, controller,  # noqa: F811
        make_deployment, catalog, busybox_image):  # noqa: F811
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=TALKER)])
    wait_for_deployment(deployment_id, "ready")
    reader = make_user("qa-anna")
    team = Team(name="QA Team")
    db.session.add(team)
    db.session.flush()
    db.session.add_all([TeamMember(team_id=team.id, user_id=reader.id),
                        Grant(team_id=team.id, project_id=catalog["project"].id, level="read_only")])
    db.session.commit()

    page = browser_login("qa-anna")
    page.goto(f"/deployments/{deployment_id}")
    page.locator("details.logs-panel summary", has_text="web").click()
    logs = page.get_by_test_id("logs-web")
    expect(logs).to_contain_text("tick-")  # the last lines, loaded once
    panel = page.locator("details.logs-panel", has_text="web")
    panel.get_by_role("button", name="Follow").click()
    stop = panel.get_by_role("button", name="Stop following")
    expect(stop).to_be_visible()
    first = logs.inner_text()
    expect(logs).not_to_have_text(first, timeout=15_000)  # new lines keep coming
    assert "[" not in logs.inner_text(), logs.inner_text()  # no error or end message

    stop.click()
    expect(panel.get_by_role("button", name="Follow")).to_be_visible()
    stopped = logs.inner_text()
    page.wait_for_timeout(1000)  # ticks come every 0.2 s: a live stream would have added some
    assert logs.inner_text() == stopped
