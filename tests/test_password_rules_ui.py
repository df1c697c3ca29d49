"""The pages that ask for a password state the rule app/services/password_rules.py enforces,
so nobody learns it one refusal at a time (issue 15)."""
from app.services.password_rules import DEFAULT_MIN_LENGTH, problem

RULE = ("at least 12 characters (at most 256), 5 of them different, without the username and "
        "not a common password")


def test_the_login_page_states_the_password_rule(client):
    page = client.get("/login").text
    assert f'<small data-testid="password-rules">Passwords: {RULE}.</small>' in page


def test_the_user_form_states_the_rule_and_follows_the_configured_length(app, client, login, admin,
                                                                       monkeypatch):
    login("admin")
    assert "At least 12 characters" in client.get("/admin/users").text
    monkeypatch.setitem(app.config, "NULLOPS_PASSWORD_MIN_LENGTH", 16)
    assert "At least 16 characters" in client.get("/admin/users").text


def test_the_stated_rule_is_the_enforced_one():
    assert DEFAULT_MIN_LENGTH == 12
    assert problem("my-admin-password-42", "admin", 12) == "do not include the username"
    assert problem("a-long-good-pass-42", "admin", 12) is None
