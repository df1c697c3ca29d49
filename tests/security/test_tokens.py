"""Issue 17 item 3: API tokens have scopes and expiry, a token never makes a wider one, a new
password revokes the old tokens, an API login gives a first token, and admins issue tokens for
service accounts (which never log in)."""
from datetime import timedelta

import pytest

from app import access
from app.extensions import db
from app.models import ApiToken, Environment, Project
from app.services import auth, users
from app.services.errors import Forbidden, Unauthorized
from tests.conftest import STRONG_PASSWORD

NEW_PASSWORD = "another-Strong-pass-42"


def _bearer(raw):
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def token_of(app):
    def make(user, scope="admin", days=None, name=None):
        _token, raw = auth.create_token(user, user, name or f"t-{scope}-{days}", days, scope)
        return _bearer(raw)
    return make


# --- scopes -------------------------------------------------------------------------------------
def test_read_only_token_reads_but_changes_nothing(client, admin, token_of):
    headers = token_of(admin, "read-only")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    assert client.get("/api/v1/users", headers=headers).status_code == 200
    for method, path, body in [
        ("PATCH", "/api/v1/me", {"full_name": "x"}),
        ("POST", "/api/v1/me/password", {"current_password": STRONG_PASSWORD,
                                         "new_password": NEW_PASSWORD}),
        ("POST", "/api/v1/tokens", {"name": "wider"}),
        ("POST", "/api/v1/projects", {"name": "shop"}),
        ("DELETE", "/api/v1/deployments/1", None),
        ("POST", "/api/v1/users", {"username": "carol", "password": NEW_PASSWORD}),
    ]:
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert "scope" in response.json["error"]["message"]
    assert users.by_username("carol") is None


def test_deploy_token_runs_the_deployment_lifecycle_but_administers_nothing(
        client, admin, token_of):
    headers = token_of(admin, "deploy")
    # Past the scope check: the deployment does not exist.
    assert client.delete("/api/v1/deployments/12345", headers=headers).status_code == 404
    assert client.post("/api/v1/deployments/12345/extend", headers=headers).status_code == 404
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).status_code == 403
    assert client.post("/api/v1/tokens", json={"name": "x"}, headers=headers).status_code == 403


def test_deploy_scope_is_checked_by_the_access_module_itself(app, admin):
    project, environment = Project(name="shop"), Environment(name="staging")
    db.session.add_all([project, environment])
    db.session.commit()
    with app.test_request_context("/api/v1/deployments"):
        from flask import g
        g.token_scope = "read-only"
        assert access.can(admin, "view", project)
        assert not access.can(admin, "deploy", project)
        assert not access.can_deploy_to(admin, project, environment)
        g.token_scope = "deploy"
        assert access.can_deploy_to(admin, project, environment)
        assert not access.can(admin, "manage", project)
        g.token_scope = "admin"
        assert access.can(admin, "manage", project)


def test_a_session_is_not_narrowed_by_any_scope(client, admin, login):
    login("admin")
    page = client.get("/api/v1/me")
    assert page.status_code == 200
    csrf = client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]
    response = client.post("/api/v1/projects", json={"name": "shop"}, headers={"X-CSRFToken": csrf})
    assert response.status_code == 201, response.text


# --- expiry: a token never makes a longer-lived or wider one ------------------------------------
def test_expiring_token_cannot_mint_a_non_expiring_token(client, admin, token_of):
    headers = token_of(admin, "admin", days=1)
    response = client.post("/api/v1/tokens", json={"name": "forever"}, headers=headers)
    assert response.status_code == 403, response.text
    assert "expires_in_days" in response.json["error"]["fields"]
    assert db.session.scalar(db.select(ApiToken).where(ApiToken.name == "forever")) is None


def test_expiring_token_cannot_mint_a_longer_lived_token(client, admin, token_of):
    headers = token_of(admin, "admin", days=7)
    longer = client.post("/api/v1/tokens", json={"name": "longer", "expires_in_days": 30},
                         headers=headers)
    assert longer.status_code == 403
    shorter = client.post("/api/v1/tokens", json={"name": "shorter", "expires_in_days": 1,
                                                  "scope": "read-only"}, headers=headers)
    assert shorter.status_code == 201, shorter.text
    assert shorter.json["scope"] == "read-only" and shorter.json["expires_at"] is not None


def test_a_token_cannot_mint_a_wider_scoped_token(app, admin):
    minted_with = ApiToken(scope="deploy", expires_at=None)
    with pytest.raises(Forbidden) as caught:
        auth.create_token(admin, admin, "wider", None, "admin", minted_with=minted_with)
    assert "scope" in caught.value.fields
    token, _raw = auth.create_token(admin, admin, "same", None, "deploy", minted_with=minted_with)
    assert token.scope == "deploy"


def test_expired_token_is_refused(client, admin, token_of):
    headers = token_of(admin, "admin", days=1)
    token = db.session.scalar(db.select(ApiToken).where(ApiToken.name == "t-admin-1"))
    token.expires_at = token.created_at - timedelta(seconds=1)
    db.session.commit()
    assert client.get("/api/v1/me", headers=headers).status_code == 401


# --- a new password revokes the tokens ----------------------------------------------------------
def test_password_reset_by_an_admin_revokes_the_users_tokens(client, admin, make_user, token_of):
    bob = make_user("bob")
    bobs = token_of(bob)
    assert client.get("/api/v1/me", headers=bobs).status_code == 200
    response = client.post(f"/api/v1/users/{bob.id}/password", json={"new_password": NEW_PASSWORD},
                           headers=token_of(admin))
    assert response.status_code == 204
    assert client.get("/api/v1/me", headers=bobs).status_code == 401


def test_changing_ones_own_password_revokes_ones_tokens(client, make_user, token_of):
    bob = make_user("bob")
    script, other = token_of(bob, name="script"), token_of(bob, name="laptop")
    response = client.post("/api/v1/me/password", headers=script,
                           json={"current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD})
    assert response.status_code == 204
    assert client.get("/api/v1/me", headers=other).status_code == 401
    assert client.get("/api/v1/me", headers=script).status_code == 401


# --- API login ----------------------------------------------------------------------------------
def test_api_login_gives_an_expiring_token_that_works(client, make_user):
    make_user("bob")
    response = client.post("/api/v1/auth/token",
                           json={"username": "bob", "password": STRONG_PASSWORD, "scope": "deploy"})
    assert response.status_code == 201, response.text
    body = response.json
    assert body["scope"] == "deploy" and body["expires_at"] is not None
    me = client.get("/api/v1/me", headers=_bearer(body["token"]))
    assert me.status_code == 200 and me.json["username"] == "bob"


def test_api_login_never_gives_a_non_expiring_token(client, make_user):
    make_user("bob")
    response = client.post("/api/v1/auth/token", json={
        "username": "bob", "password": STRONG_PASSWORD, "expires_in_days": None})
    assert response.status_code == 422
    assert "expires_in_days" in response.json["error"]["fields"]


def test_api_login_is_throttled_like_the_login_form(client, app, make_user):
    make_user("bob")
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    for _ in range(limit):
        wrong = client.post("/api/v1/auth/token", json={"username": "bob", "password": "wrong-1"})
        assert wrong.status_code == 401
    throttled = client.post("/api/v1/auth/token",
                            json={"username": "bob", "password": STRONG_PASSWORD})
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0


# --- service accounts ---------------------------------------------------------------------------
def test_admin_creates_a_service_account_and_issues_it_a_scoped_token(client, admin, token_of):
    headers = token_of(admin)
    created = client.post("/api/v1/users", json={"username": "ci-bot", "kind": "service"},
                          headers=headers)
    assert created.status_code == 201, created.text
    assert created.json["kind"] == "service"
    issued = client.post(f"/api/v1/users/{created.json['id']}/tokens", headers=headers,
                         json={"name": "pipeline", "scope": "deploy", "expires_in_days": 30})
    assert issued.status_code == 201, issued.text
    ci = _bearer(issued.json["token"])
    assert client.get("/api/v1/me", headers=ci).json["username"] == "ci-bot"
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=ci).status_code == 403
    listed = client.get(f"/api/v1/users/{created.json['id']}/tokens", headers=headers)
    assert [t["name"] for t in listed.json["items"]] == ["pipeline"]


def test_a_service_account_never_logs_in(client, admin, login):
    users.create(admin, "ci-bot", None, kind="service")
    with pytest.raises(Unauthorized):
        auth.authenticate("ci-bot", "", "127.0.0.1")
    assert client.post("/api/v1/auth/token",
                       json={"username": "ci-bot", "password": "x" * 16}).status_code == 401
    assert login("ci-bot", "x" * 16).status_code != 302


def test_a_service_account_has_no_password(client, admin, token_of):
    headers = token_of(admin)
    with_password = client.post("/api/v1/users", headers=headers, json={
        "username": "ci-bot", "kind": "service", "password": NEW_PASSWORD})
    assert with_password.status_code == 422
    assert "password" in with_password.json["error"]["fields"]
    bot = users.create(admin, "ci-bot", None, kind="service")
    reset = client.post(f"/api/v1/users/{bot.id}/password", json={"new_password": NEW_PASSWORD},
                        headers=headers)
    assert reset.status_code == 409


def test_a_person_still_needs_a_password(client, admin, token_of):
    response = client.post("/api/v1/users", json={"username": "carol"}, headers=token_of(admin))
    assert response.status_code == 422
    assert "password" in response.json["error"]["fields"]


def test_admins_issue_tokens_only_for_service_accounts(client, admin, make_user, token_of):
    bob = make_user("bob")
    response = client.post(f"/api/v1/users/{bob.id}/tokens", json={"name": "x"},
                           headers=token_of(admin))
    assert response.status_code == 409


def _call_every_changing_operation(client, headers):
    import re

    from app.api.core import OPERATIONS
    answers = {}
    for op in OPERATIONS:
        if op.public or op.method in ("GET", "HEAD", "OPTIONS"):
            continue
        path = "/api/v1" + re.sub(r"<int:\w+>", "1", op.rule)
        path = re.sub(r"<\w+>", "X", path)
        answers[(op.method, op.rule, op.scope)] = client.open(
            path, method=op.method, json={}, headers=headers).status_code
    return answers


def test_a_read_only_token_is_refused_by_every_operation_that_changes_something(
        client, admin, token_of):
    answers = _call_every_changing_operation(client, token_of(admin, "read-only"))
    assert len(answers) > 40
    assert {key: status for key, status in answers.items() if status != 403} == {}


def test_a_deploy_token_is_refused_by_every_changing_operation_outside_the_lifecycle(
        client, admin, token_of):
    answers = _call_every_changing_operation(client, token_of(admin, "deploy"))
    refused = {key for key, status in answers.items() if status == 403}
    assert refused == {key for key in answers if key[2] == "admin"}
    assert {key[1] for key in answers if key[2] == "deploy"} == {
        "/deployments", "/deployments/<int:deployment_id>", "/deployments/<int:deployment_id>/retry",
        "/deployments/<int:deployment_id>/clone", "/deployments/<int:deployment_id>/extend"}
