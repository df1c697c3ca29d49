"""Login is the default for every route: walk the URL map, anonymously."""
import re

from app.api.core import public_endpoints
from app.health import PUBLIC_ENDPOINTS as HEALTH_PUBLIC
from app.ingress.page_view import PUBLIC_ENDPOINTS as INGRESS_PUBLIC
from app.ui import PUBLIC_ENDPOINTS as UI_PUBLIC
from tests.conftest import csrf_from

# The ingress page tells no more than a deployment's URL does (app/ingress/page_view.py). The
# API login takes a username and password like the login form (issue 17 item 3).
EXPECTED_PUBLIC = {"health.healthz", "health.readyz", "ui.login", "static", "api.openapi_document",
                   "ingress_pages.ingress_page", "api.login_for_token"}


def _concrete(rule):
    return re.sub(r"<(?:int:)?(\w+)>", lambda m: "1" if "int:" in m.group(0) else "x", rule)


def test_the_public_routes_are_exactly_the_expected_ones(app):
    assert public_endpoints() | HEALTH_PUBLIC | UI_PUBLIC | INGRESS_PUBLIC == EXPECTED_PUBLIC


def test_every_other_route_refuses_anonymous_callers(app, client):
    token = csrf_from(client.get("/login").text)
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in EXPECTED_PUBLIC or rule.websocket:
            continue  # WebSocket routes check login themselves (tests/controller/test_log_follow.py)
        path = _concrete(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            body = {"csrf_token": token} if method != "GET" else None
            response = client.open(path, method=method, data=body)
            if rule.endpoint.startswith("api."):
                assert response.status_code == 401, (method, path, response.status_code)
            else:
                assert response.status_code == 302, (method, path, response.status_code)
                assert response.headers["Location"].startswith("/login")
            checked += 1
    assert checked > 30


def test_admin_pages_refuse_users(client, make_user, login):
    make_user("eve")
    login("eve")
    assert client.get("/admin/users").status_code == 403
    assert client.get("/teams").status_code == 200
    assert client.get("/teams/999").status_code == 404


def test_login_redirects_only_to_local_paths(client, admin):
    for target, expected in (("/teams", "/teams"), ("https://evil.example/", "/"),
                             ("//evil.example/", "/")):
        page = client.get(f"/login?next={target}")
        response = client.post(f"/login?next={target}", data={
            "username": "admin", "password": "correct-horse-battery-9",
            "csrf_token": csrf_from(page.text)})
        assert response.headers["Location"] == expected
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/").text)})
