"""Logins, sessions, CSRF, throttling and personal API tokens."""
import re
from datetime import timedelta

from app.extensions import db
from app.models import ApiToken, AuditEntry
from app.models.types import utcnow
from app.services import users
from tests.conftest import STRONG_PASSWORD, csrf_from


def test_first_admin_logs_in_through_the_form_and_reaches_the_overview(client, admin, login):
    response = login("admin", follow=True)
    assert response.status_code == 200
    assert "Welcome" in response.text and "admin" in response.text


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(client, admin, login):
    response = login("admin", "not-the-password-123")
    assert response.status_code == 401
    assert "wrong username or password" in response.text
    assert login("ghost", "whatever-password-1").status_code == 401


def test_session_cookie_is_http_only_and_same_site(client, admin, login):
    response = login("admin")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_login_form_without_csrf_token_is_refused(client, admin):
    response = client.post("/login", data={"username": "admin", "password": STRONG_PASSWORD})
    assert response.status_code == 400
    assert client.get("/", follow_redirects=False).status_code == 302


def test_repeated_failures_lock_the_username_then_the_lock_expires(app, client, admin, login,
                                                                   monkeypatch):
    monkeypatch.setitem(app.config, "NULLOPS_LOGIN_MAX_FAILURES", 3)
    for _ in range(3):
        assert login("admin", "wrong-password-123").status_code == 401
    locked = login("admin")  # even the right password waits out the lock
    assert locked.status_code == 429 and "try again in" in locked.text
    # Age the failures past the window: the right password works again.
    db.session.execute(db.update(db.metadata.tables["login_failures"]).values(
        at=utcnow() - timedelta(seconds=app.config["NULLOPS_LOGIN_LOCKOUT_SECONDS"] + 1)))
    db.session.commit()
    assert login("admin").status_code == 302


def test_passwords_never_reach_the_log_or_the_audit(client, admin, login, caplog):
    login("admin", "wrong-password-XYZ-123")
    login("admin")
    stored = " ".join(str(e.details) + e.target_name for e in db.session.scalars(db.select(AuditEntry)))
    assert "wrong-password-XYZ-123" not in stored and STRONG_PASSWORD not in stored
    assert "wrong-password-XYZ-123" not in caplog.text and STRONG_PASSWORD not in caplog.text


def test_logout_needs_a_post_with_csrf_and_ends_the_session(client, admin, login):
    login("admin")
    page = client.get("/")
    assert client.get("/logout").status_code == 405
    client.post("/logout", data={"csrf_token": csrf_from(page.text)})
    assert client.get("/").status_code == 302


def test_password_change_ends_other_sessions(app, client, admin, login):
    login("admin")
    other = app.test_client()
    page = other.get("/login")
    other.post("/login", data={"username": "admin", "password": STRONG_PASSWORD,
                               "csrf_token": csrf_from(page.text)})
    assert other.get("/").status_code == 200
    users.set_password(admin, admin, "brand-new-Password-77", current_password=STRONG_PASSWORD)
    assert other.get("/").status_code == 302
    assert client.get("/").status_code == 302


def test_disabled_user_cannot_log_in(client, make_user, login):
    make_user("eve", active=False)
    assert login("eve").status_code == 401


def test_api_with_session_cookie_needs_the_csrf_header(client, admin, login):
    login("admin")
    page = client.get("/")
    refused = client.post("/api/v1/teams", json={"name": "Team A"})
    assert refused.status_code == 400 and refused.json["error"]["code"] == "csrf_failed"
    accepted = client.post("/api/v1/teams", json={"name": "Team A"},
                           headers={"X-CSRFToken": csrf_from(page.text)})
    assert accepted.status_code == 201


def test_token_is_shown_once_stored_hashed_and_works_as_bearer(client, admin, bearer):
    created = client.post("/api/v1/tokens", json={"name": "ci"}, headers=bearer(admin))
    assert created.status_code == 201
    raw = created.json["token"]
    row = db.session.get(ApiToken, created.json["id"])
    assert raw not in (row.token_hash, row.prefix) and raw.startswith(row.prefix)
    listed = client.get("/api/v1/tokens", headers=bearer(admin)).json["items"]
    assert all("token" not in item for item in listed)
    assert raw not in client.get("/api/v1/tokens", headers=bearer(admin)).text
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert me.status_code == 200 and me.json["username"] == "admin"
    assert "Set-Cookie" not in me.headers


def test_revoked_token_stops_working_at_once(client, admin):
    from app.services import auth

    _token, raw = auth.create_token(admin, admin, "script")
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/tokens/{_token.id}", headers=headers).status_code == 204
    refused = client.get("/api/v1/me", headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json["error"]["message"]


def test_expired_token_is_refused_with_the_reason(client, admin):
    from app.services import auth

    token, raw = auth.create_token(admin, admin, "short-lived", expires_in_days=1)
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    refused = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert refused.status_code == 401 and "expired" in refused.json["error"]["message"]


def test_tokens_of_disabled_users_stop_working(client, make_user, admin, bearer):
    eve = make_user("eve")
    headers = bearer(eve)
    users.update(admin, eve, is_active=False)
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_token_in_a_url_is_never_accepted(client, admin):
    from app.services import auth

    _token, raw = auth.create_token(admin, admin, "url")
    for name in ("token", "access_token", "api_key"):
        response = client.get(f"/api/v1/me?{name}={raw}")
        assert response.status_code == 400
        assert "never accepted in a URL" in response.json["error"]["message"]


def test_malformed_authorization_headers_get_a_clear_401(client, admin):
    for header in ("Basic YWRtaW46eA==", "Bearer", "Bearer nope", "Bearer nlo_unknown"):
        response = client.get("/api/v1/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json["error"]["code"] == "unauthorized"


def test_a_new_token_waits_for_the_next_page_encrypted_and_is_shown_once(client, admin, login):
    import base64
    import re
    import zlib

    login("admin")
    page = client.get("/settings")
    response = client.post("/settings/tokens", data={"name": "ci", "csrf_token": csrf_from(page.text)})
    cookie = response.headers["Set-Cookie"].split("session=", 1)[1].split(";", 1)[0]
    body = cookie.lstrip(".").split(".", 1)[0]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    readable = zlib.decompress(raw) if cookie.startswith(".") else raw  # what anyone can read
    shown = client.get("/settings").text
    token = re.search(r'data-testid="new-token">([^<]+)<', shown).group(1)
    assert token.startswith("nlo_") and token.encode() not in readable
    assert 'data-testid="new-token"' not in client.get("/settings").text  # once only


def test_a_token_made_on_the_settings_page_has_the_scope_and_expiry_chosen(client, login, admin):
    login("admin")
    page = client.get("/settings").text
    assert 'name="scope"' in page and 'name="expires_in_days"' in page
    client.post("/settings/tokens", data={"name": "reader", "scope": "read-only", "expires_in_days": "7",
                                          "csrf_token": csrf_from(page)})
    shown = client.get("/settings").text
    raw = re.search(r'data-testid="new-token">([^<]+)<', shown).group(1)
    assert "<td>read-only</td>" in shown
    headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    refused = client.post("/api/v1/projects", json={"name": "nope"}, headers=headers)
    assert refused.status_code == 403
    bad = client.post("/settings/tokens", data={"name": "x", "scope": "root", "csrf_token": csrf_from(shown)})
    assert bad.status_code in (400, 422) and "scope" in bad.text


def test_the_settings_page_uses_no_deprecated_wtforms_choices(client, login, admin):
    """The token form's scope choices were tuples: WTForms warns that 3.4 refuses them (seen in
    tests/browser/test_journey.py's run)."""
    import warnings

    login("admin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        page = client.get("/settings")
        made = client.post("/settings/tokens", data={"name": "ci", "scope": "deploy",
                                                     "csrf_token": csrf_from(page.text)})
    assert page.status_code == 200 and 'name="scope"' in page.text
    assert made.status_code == 302
