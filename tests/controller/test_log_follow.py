"""Following a service's log from the browser: the web tier's WebSocket, the controller's
internal endpoint, the node's link, a real agent and a real container. And who may not."""
import json
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import STRONG_PASSWORD, csrf_from
from tests.controller.test_deployments import TOKEN

from .conftest import wait_for_deployment, wait_for_status, web_step

TALKER = ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done & "
          "exec httpd -f -p 8000"]


def session_for(web, username):
    """A browser-like session: the real login form, its CSRF token, the session cookie."""
    session = requests.Session()
    page = session.get(f"http://{web}/login")
    session.post(f"http://{web}/login", data={"username": username, "password": STRONG_PASSWORD,
                                              "csrf_token": csrf_from(page.text)})
    return session


def open_follow(web, path, session=None, origin=None):
    """The handshake a browser makes: its cookie, its Origin and its own User-Agent (Flask-Login's
    strong session protection ties the session to it)."""
    headers = {"Origin": origin or f"http://{web}"}
    agent = requests.utils.default_user_agent()
    if session is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        agent = session.headers["User-Agent"]
    return connect(f"ws://{web}{path}", additional_headers=headers, user_agent_header=agent,
                   proxy=None, open_timeout=10, close_timeout=2)  # see refused()


def refused(ws, timeout=10):
    """A refused follow: the server's message, then the code of its close frame. (Not the end of
    the TCP connection: that is the test server's, and werkzeug may read on, waiting for another
    request on that socket, long after the closing handshake; gunicorn does not.)"""
    refusal = json.loads(ws.recv(timeout))
    deadline = time.monotonic() + timeout
    while ws.protocol.close_rcvd is None:
        assert time.monotonic() < deadline, f"no close frame after {refusal}"
        time.sleep(0.02)
    return refusal, ws.protocol.close_rcvd.code


def frames(ws, count, timeout=20):
    seen = []
    while len(seen) < count:
        try:
            seen.append(json.loads(ws.recv(timeout)))
        except ConnectionClosed:
            raise AssertionError(f"closed after {seen}") from None
    return seen


@pytest.mark.docker
def test_a_reader_follows_a_service_log_and_outsiders_get_nothing(
        app, web, agents, add_node, controller, make_deployment, catalog, make_user, busybox_image,
        monkeypatch):
    from app.extensions import db
    from app.models import Grant, Team, TeamMember

    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    # The controller's internal endpoint took a free port; the web tier finds it in its config.
    monkeypatch.setitem(app.config, "NULLOPS_CONTROLLER_INTERNAL", active.internal.address)
    deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=TALKER)])
    wait_for_deployment(deployment_id, "ready")
    reader = make_user("qa-anna")
    make_user("nobody")  # in no team
    team = Team(name="QA Team")
    db.session.add(team)
    db.session.flush()
    db.session.add_all([TeamMember(team_id=team.id, user_id=reader.id),
                        Grant(team_id=team.id, project_id=catalog["project"].id, level="read_only")])
    db.session.commit()
    path = f"/deployments/{deployment_id}/logs/web/follow"

    with open_follow(web, path, session_for(web, "qa-anna")) as ws:   # Read-Only sees logs
        lines = [line for frame in frames(ws, 6) for line in frame.get("lines", [])]
    assert any(line.startswith("tick-") for line in lines), lines

    for session, origin in ((None, None), (session_for(web, "nobody"), None),
                            (session_for(web, "qa-anna"), "http://evil.example")):
        with open_follow(web, path, session, origin) as ws:
            refusal, close_code = refused(ws)
            assert "error" in refusal and "tick" not in json.dumps(refusal)
            assert close_code == 1008
