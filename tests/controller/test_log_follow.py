"""Following a service's log from the browser: the web tier's WebSocket, the controller's
internal endpoint, the node's link, a real agent and a real container. And who may not, how
many at once, and that open streams leave the web tier's threads to everyone else."""
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import STRONG_PASSWORD, csrf_from
from tests.controller.test_deployments import TOKEN

from .conftest import free_port, wait_for_deployment, wait_for_status, web_step

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
    return refusal, close_code(ws, refusal, timeout)


def close_code(ws, after, timeout=10):
    deadline = time.monotonic() + timeout
    while ws.protocol.close_rcvd is None:
        assert time.monotonic() < deadline, f"no close frame after {after}"
        time.sleep(0.02)
    return ws.protocol.close_rcvd.code


def log_lines(ws, timeout=20):
    """The lines of the next frames that carry some (heartbeats carry none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = json.loads(ws.recv(max(deadline - time.monotonic(), 0.1)))
        except (TimeoutError, ConnectionClosed) as exc:
            raise AssertionError(f"no log lines: {exc!r}") from None
        assert "error" not in frame and "end" not in frame, frame
        if frame.get("lines"):
            return frame["lines"]
    raise AssertionError("no log lines")


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
        app, web, agents, add_node, controller, make_deployment, catalog, make_user, busybox_image):
    from app.extensions import db
    from app.models import Grant, Team, TeamMember

    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
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


@pytest.fixture
def talking(app, agents, add_node, controller, make_deployment, catalog, monkeypatch):
    """start(**settings) -> (follow path, controller): a ready service that prints a line every
    0.2 s, on a real agent, through the real controller started with these settings."""

    def start(**settings):
        for key, value in settings.items():
            monkeypatch.setitem(app.config, key, value)
        agent = agents.start(TOKEN)
        node_id = add_node(agent.port_number, TOKEN)
        active = controller()
        wait_for_status(node_id, "online")
        deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=TALKER)])
        wait_for_deployment(deployment_id, "ready")
        return f"/deployments/{deployment_id}/logs/web/follow", active

    return start


@pytest.fixture
def gunicorn_web(app, tmp_path):
    """start(workers, threads) -> "host:port" of `nullops web` as installs run it (gunicorn),
    on this test's database and controller."""
    started = []

    def start(workers, threads):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
        env.update({
            "NULLOPS_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "NULLOPS_SECRET_KEY": base64.b64encode(app.config["NULLOPS_MASTER_KEY"]).decode(),
            "NULLOPS_SESSION_SECRET": app.config["SECRET_KEY"],
            "NULLOPS_COOKIE_SECURE": "false",
        })
        log = open(tmp_path / f"web-{port}.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("nullops")), "web", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--threads", str(threads)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append((process, log))
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    return f"127.0.0.1:{port}"
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, \
                (tmp_path / f"web-{port}.log").read_text()
            time.sleep(0.2)

    try:
        yield start
    finally:
        for process, log in started:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()


@pytest.mark.docker
def test_follow_sockets_beyond_the_web_threads_leave_health_api_and_pages_answering(
        talking, gunicorn_web, make_user, bearer):
    # Issue #14.4: each followed log held a gunicorn thread while it was open, so as many viewers
    # as threads stalled every page, API call and /healthz of that worker.
    admin = make_user("ops-admin", role="admin")
    path, _ = talking()
    web = gunicorn_web(workers=1, threads=2)
    session = session_for(web, "ops-admin")
    deployment_page = f"http://{web}{path.rsplit('/logs/', 1)[0]}"
    followers = []
    opened = contextlib.ExitStack()

    def follow(count):
        for _ in range(count):
            number = len(followers) + 1
            try:
                followers.append(opened.enter_context(open_follow(web, path, session)))
                log_lines(followers[-1], timeout=15)
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(f"follower {number} on a worker of 2 threads got no lines: "
                                     f"{exc!r}") from None

    def everything_answers():
        for url, client, headers in ((f"http://{web}/healthz", requests, {}),
                                     (f"http://{web}/api/v1/deployments", requests, bearer(admin)),
                                     (deployment_page, session, {})):
            started = time.monotonic()
            try:
                response = client.get(url, headers=headers, timeout=10)
            except requests.Timeout:
                raise AssertionError(f"{url} did not answer within 10 s beside {len(followers)} "
                                     "followers") from None
            assert response.status_code == 200, (url, response.status_code)
            print(f"{url}: {time.monotonic() - started:.3f} s beside {len(followers)} followers")

    with opened:
        follow(2)  # as many as the worker has threads
        everything_answers()
        follow(4)  # three times as many
        everything_answers()
        for ws in followers:  # and every follower still streams
            assert any(line.startswith("tick-") for line in log_lines(ws))


@pytest.mark.docker
def test_a_user_over_the_per_user_cap_is_told_so_and_closed_while_others_follow(
        talking, web, make_user):
    make_user("ops-anna", role="admin")
    make_user("ops-bob", role="admin")
    path, _ = talking(NULLOPS_LOG_STREAMS_PER_USER=2, NULLOPS_LOG_STREAMS_MAX=10)
    anna = session_for(web, "ops-anna")
    with open_follow(web, path, anna) as first, open_follow(web, path, anna) as second:
        log_lines(first)
        log_lines(second)
        with open_follow(web, path, anna) as third:
            refusal, close_code = refused(third)
        assert "2 logs" in refusal.get("error", "") and "per user" in refusal["error"], refusal
        assert close_code == 1013  # try again later: it passes when one of hers closes
        with open_follow(web, path, session_for(web, "ops-bob")) as others:
            assert any(line.startswith("tick-") for line in log_lines(others))


@pytest.mark.docker
def test_over_the_cap_in_all_the_next_follower_is_told_so_until_one_closes(
        talking, web, make_user):
    make_user("ops-anna", role="admin")
    make_user("ops-bob", role="admin")
    path, _ = talking(NULLOPS_LOG_STREAMS_PER_USER=2, NULLOPS_LOG_STREAMS_MAX=3)
    anna, bob = session_for(web, "ops-anna"), session_for(web, "ops-bob")
    with open_follow(web, path, anna) as first, open_follow(web, path, anna) as second, \
            open_follow(web, path, bob) as bobs:
        for ws in (first, second, bobs):
            log_lines(ws)
        with open_follow(web, path, bob) as over:
            refusal, close_code = refused(over)
        assert "3 logs" in refusal.get("error", "") and "in all" in refusal["error"], refusal
        assert close_code == 1013

        first.close()  # a place frees up once the controller has seen it go
        deadline = time.monotonic() + 15
        while True:
            with open_follow(web, path, bob) as again:
                frame = json.loads(again.recv(15))
                if "error" not in frame:
                    break
            assert time.monotonic() < deadline, f"still refused after a follower left: {frame}"
            time.sleep(0.3)


@pytest.mark.docker
def test_a_follower_that_stops_gets_its_close_answered_and_the_node_unfollows(
        talking, web, make_user):
    make_user("ops-anna", role="admin")
    path, active = talking()
    with open_follow(web, path, session_for(web, "ops-anna")) as ws:
        log_lines(ws)
        ws.close()  # what Stop following does: a close frame, then wait for the server's
        assert ws.protocol.close_rcvd is not None, "the server never answered the close"
        assert ws.protocol.close_rcvd.code == 1000
    deadline = time.monotonic() + 10
    while active.manager._streams:
        assert time.monotonic() < deadline, "the node was not unfollowed"
        time.sleep(0.1)


@pytest.mark.docker
def test_a_follower_who_loses_access_or_their_session_is_told_so_and_closed(
        talking, web, make_user, catalog, monkeypatch):
    from app.extensions import db
    from app.models import Grant, Team, TeamMember
    from app.services import users
    from app.ui import log_stream

    monkeypatch.setattr(log_stream, "RECHECK_S", 0.5)  # 30 s in production
    path, _ = talking()
    reader, admin = make_user("qa-anna"), make_user("ops-bob", role="admin")
    make_user("ops-carl", role="admin")  # so that ops-bob is not the last admin
    team = Team(name="QA Team")
    db.session.add(team)
    db.session.flush()
    grant = Grant(team_id=team.id, project_id=catalog["project"].id, level="read_only")
    db.session.add_all([TeamMember(team_id=team.id, user_id=reader.id), grant])
    db.session.commit()

    with open_follow(web, path, session_for(web, "qa-anna")) as anna, \
            open_follow(web, path, session_for(web, "ops-bob")) as bob:
        log_lines(anna)
        log_lines(bob)
        db.session.delete(grant)  # an admin takes the team's access away
        db.session.commit()
        users.update(None, admin, is_active=False)  # and deactivates ops-bob
        for ws, reason in ((anna, "does not exist"), (bob, "your session ended")):
            deadline = time.monotonic() + 15
            while "error" not in (frame := json.loads(ws.recv(15))):
                assert time.monotonic() < deadline, "the stream went on"
            assert reason in frame["error"], frame
            assert close_code(ws, frame) == 1008
