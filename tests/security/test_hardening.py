"""Issue 17 item 6: request size limit, security headers on pages, nullopsctl keeps the token
at home on redirects."""
import http.server
import threading

import pytest

from client.nullopsctl import Api


# --- request size ------------------------------------------------------------------------------
def test_a_body_over_the_limit_answers_413_with_a_json_error(client, admin, bearer, app):
    too_big = b'{"name": "' + b"x" * app.config["MAX_CONTENT_LENGTH"] + b'"}'
    response = client.post("/api/v1/teams", data=too_big, headers={
        **bearer(admin), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_large"


def test_a_body_under_the_limit_is_read(client, admin, bearer):
    response = client.post("/api/v1/teams", json={"name": "QA Team", "description": "x" * 400},
                           headers=bearer(admin))
    assert response.status_code == 201


# --- headers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/login", "/api/v1/openapi.json"])
def test_pages_may_not_be_framed_and_run_only_this_origins_scripts(client, path):
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_have_no_inline_scripts_the_policy_would_block(client, admin, login):
    login("admin")
    for path in ("/", "/login", "/deployments"):
        html = client.get(path, follow_redirects=True).text
        for tag in html.split("<script")[1:]:
            assert tag.split(">", 1)[0].strip().startswith("src="), (path, tag[:80])


# --- nullopsctl and redirects ------------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list
    redirect_to = None

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.seen.append((self.server.server_port, self.path, self.headers.get("Authorization")))
        if self.redirect_to and not self.path.startswith("/landed"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to(self.path))
            self.end_headers()
            return
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    seen, started = [], []
    try:
        for _ in range(2):
            handler = type("Handler", (_Recorder,), {"seen": seen})
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            started.append(server)
        yield started, seen
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


def test_nullopsctl_drops_the_token_on_a_redirect_to_another_origin(servers):
    (home, elsewhere), seen = servers
    home.RequestHandlerClass.redirect_to = staticmethod(
        lambda path: f"http://127.0.0.1:{elsewhere.server_port}/landed")
    Api(f"http://127.0.0.1:{home.server_port}", "nlo_secret").call("GET", "/me")
    assert seen[0] == (home.server_port, "/api/v1/me", "Bearer nlo_secret")
    assert seen[1] == (elsewhere.server_port, "/landed", None)


def test_nullopsctl_keeps_the_token_on_a_redirect_within_its_origin(servers):
    (home, _elsewhere), seen = servers
    home.RequestHandlerClass.redirect_to = staticmethod(lambda path: "/landed")
    Api(f"http://127.0.0.1:{home.server_port}", "nlo_secret").call("GET", "/me")
    assert seen[1] == (home.server_port, "/landed", "Bearer nlo_secret")


# --- refused attempts are audited --------------------------------------------------------------
def _refusals():
    from app.extensions import db
    from app.models import AuditEntry
    return db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "access.refused")
                              .order_by(AuditEntry.id)).all()


def test_a_refused_api_call_is_audited_with_who_and_what(client, make_user, bearer):
    bob = make_user("bob")
    response = client.post("/api/v1/projects", json={"name": "shop"}, headers=bearer(bob))
    assert response.status_code == 403
    (entry,) = _refusals()
    assert entry.actor_username == "bob" and entry.target_name == "/api/v1/projects"
    assert entry.details["method"] == "POST" and entry.details["via"] == "token"
    assert "may not" in entry.details["reason"]


def test_a_refused_page_is_audited(client, make_user, login):
    make_user("bob")
    login("bob")
    assert client.get("/admin/users").status_code == 403
    (entry,) = _refusals()
    assert entry.actor_username == "bob" and entry.target_name == "/admin/users"


def test_a_call_outside_a_tokens_scope_is_audited(client, admin):
    from app.services import auth
    _token, raw = auth.create_token(admin, admin, "reader", None, "read-only")
    client.delete("/api/v1/deployments/1", headers={"Authorization": f"Bearer {raw}"})
    (entry,) = _refusals()
    assert "scope" in entry.details["reason"]
