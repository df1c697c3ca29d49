"""Browser fixtures: the test app on a live port, and Debian's headless Chromium through
pytest-playwright (`page`, `new_context`).

Chromium is the system package (/usr/bin/chromium); `playwright install` is never needed. When
it is missing the browser tests skip, unless NULLOPS_TEST_BROWSER=1 (`make test`) asks for them,
in which case they fail.
"""
import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import STRONG_PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
VENDOR, ISLANDS = STATIC / "vendor", STATIC / "build"
TIMEOUT_MS = 10_000


def _require(condition, message):
    if condition:
        return
    if os.environ.get("NULLOPS_TEST_BROWSER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium."""
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium")
    _require((VENDOR / "pico.min.css").exists(), f"{VENDOR} is missing: run `make assets`")
    _require((ISLANDS / "pipeline-editor" / "main.js").exists(), f"{ISLANDS} is missing: run `make assets`")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args():
    """Replaces pytest-playwright's (which pulls in pytest-base-url's fixture, deprecated on
    pytest 9); every context here gets the live server as base_url instead."""
    return {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def live_server(app):
    """Serve the test app on a free local port; yields the base URL.

    Requests run in the server's threads, each in its own app context and database session, so
    rows a test creates must be committed first (the factories commit)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def context(new_context, live_server):
    """A fresh browser context (own cookies) whose relative URLs go to the live server."""
    ctx = new_context(base_url=live_server)
    ctx.set_default_timeout(TIMEOUT_MS)
    return ctx


@pytest.fixture
def browser_login(new_context, live_server):
    """Log a user in through the real form in a new browser context; returns the page."""

    def do(username, password=STRONG_PASSWORD):
        ctx = new_context(base_url=live_server)
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        page.goto("/login")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{live_server}/")
        return page

    return do
