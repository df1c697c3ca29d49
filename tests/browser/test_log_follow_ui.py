"""The deployment page's Follow button through a real browser: a Read-Only member follows a
real service's log (real agent, real controller, real container) and stops following; a line
the service prints only after the follow started arrives (issue 15: Follow built
`ws://hostws://host/...` once)."""
import uuid

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

# A web service that prints `after-follow-<word>` once the test writes <word> to /tmp/go in its
# container (docker exec), so the line cannot have been there before the follow started.
WAITS_TO_PRINT = ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html; echo web-started; "
                  "(while [ ! -s /tmp/go ]; do sleep 0.1; done; echo after-follow-$(cat /tmp/go)) & "
                  "exec httpd -f -p 8000 -h /www"]


def make_it_print(docker_client, deployment_id, step_id="web", node_id=None):
    """Have the service print its line now; returns the line. `node_id` (the agent's) tells it
    apart from a deployment with the same id in another test run sharing the engine."""
    word = uuid.uuid4().hex[:8]
    node = [f"org.nullops.node={node_id}"] if node_id else []
    [container] = docker_client.containers.list(filters={"label": [
        f"org.nullops.deployment=dep-{deployment_id}", f"org.nullops.step={step_id}", *node]})
    code, output = container.exec_run(["sh", "-c", f"echo {word} > /tmp/go"])
    assert code == 0, output
    return f"after-follow-{word}"


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


def test_a_line_printed_after_the_follow_starts_arrives(
        app, live_server, browser_login, agents, add_node, controller,  # noqa: F811
        make_deployment, catalog, busybox_image, docker_client, admin):  # noqa: F811
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=WAITS_TO_PRINT)])
    wait_for_deployment(deployment_id, "ready")

    page = browser_login("admin")
    page.goto(f"/deployments/{deployment_id}")
    summary = page.locator("details.logs-panel summary", has_text="web")
    summary.focus()
    page.keyboard.press("Enter")  # the panel opens from the keyboard
    logs = page.get_by_test_id("logs-web")
    expect(logs).to_contain_text("web-started")
    panel = page.locator("details.logs-panel", has_text="web")
    follow = panel.get_by_role("button", name="Follow")
    follow.focus()
    page.keyboard.press("Enter")
    expect(panel.get_by_role("button", name="Stop following")).to_be_visible()
    expect(logs).to_contain_text("web-started")  # the stream's tail came: it is connected
    assert "after-follow-" not in logs.inner_text()

    line = make_it_print(docker_client, deployment_id)
    expect(logs).to_contain_text(line, timeout=15_000)
    assert "[" not in logs.inner_text(), logs.inner_text()  # no error or end message
