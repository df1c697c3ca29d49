"""Bad input gets a 4xx naming the field and the fix, writes nothing, shows no stack trace."""
import pytest

from app.extensions import db
from app.models import AuditEntry, Project, Team, User


def _counts():
    return tuple(db.session.scalar(db.select(db.func.count()).select_from(m)) for m in
                 (User, Team, Project, AuditEntry))


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


CASES = [
    ("POST", "/api/v1/teams", b'{"name": "x",', 400, "malformed_json", None),
    ("POST", "/api/v1/teams", b'["name"]', 400, "malformed_json", None),
    ("POST", "/api/v1/teams", {"name": 42}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/teams", {"name": "A", "colour": "red"}, 422, "validation_failed", "colour"),
    ("POST", "/api/v1/teams", {"name": "x" * 65}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/teams", {}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/projects", {"name": "Not A Label"}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/projects", {"name": "a" * 64}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/projects", {"name": "shop", "base_domain": "example.com"}, 422,
     "validation_failed", "base_domain"),
    ("POST", "/api/v1/environments", {"name": "staging", "base_domain": "https://example.com"}, 422,
     "validation_failed", "base_domain"),
    ("POST", "/api/v1/environments", {"name": "staging", "base_domain": "Example.com"}, 422,
     "validation_failed", "base_domain"),
    ("POST", "/api/v1/environments", {"name": "staging", "base_domain": "a..b"}, 422,
     "validation_failed", "base_domain"),
    ("POST", "/api/v1/environments", {"name": "staging", "base_domain": ("a" * 60 + ".") * 3 + "a" * 21},
     422, "validation_failed", "base_domain"),
    ("POST", "/api/v1/environments", {"name": "staging", "cleanup_minutes": 4}, 422,
     "validation_failed", "cleanup_minutes"),
    ("POST", "/api/v1/environments", {"name": "staging", "cleanup_minutes": 525601}, 422,
     "validation_failed", "cleanup_minutes"),
    ("POST", "/api/v1/environments", {"name": "staging", "cleanup_minutes": "60"}, 422,
     "validation_failed", "cleanup_minutes"),
    ("POST", "/api/v1/environments/1/nodes", {"name": "node-1", "host": "10.0.0.1"}, 404,
     "not_found", None),
    ("POST", "/api/v1/nodes/1/approve-thumbprint", {"thumbprint": "a" * 64}, 404, "not_found", None),
    ("POST", "/api/v1/users", {"username": "carol", "password": "short"}, 422, "validation_failed",
     "password"),
    ("POST", "/api/v1/users", {"username": "carol", "password": "carol-is-my-password"}, 422,
     "validation_failed", "password"),
    ("POST", "/api/v1/users", {"username": "carol", "password": "aaaaaaaaaaaaaaaa"}, 422,
     "validation_failed", "password"),
    ("POST", "/api/v1/users", {"username": "Carol!", "password": "correct-horse-9"}, 422,
     "validation_failed", "username"),
    ("POST", "/api/v1/users", {"username": "carol", "password": "correct-horse-9", "role": "root"},
     422, "validation_failed", "role"),
    ("PATCH", "/api/v1/users/1", {"is_active": "no"}, 422, "validation_failed", "is_active"),
    ("POST", "/api/v1/tokens", {"name": ""}, 422, "validation_failed", "name"),
    ("POST", "/api/v1/tokens", {"name": "t", "expires_in_days": 0}, 422, "validation_failed",
     "expires_in_days"),
    ("GET", "/api/v1/audit?per_page=1000", None, 422, "validation_failed", "per_page"),
    ("GET", "/api/v1/audit?page=zero", None, 422, "validation_failed", "page"),
    ("GET", "/api/v1/teams?sort=name", None, 422, "validation_failed", "sort"),
    ("PUT", "/api/v1/projects/1/secrets/lower-case", {"value": "v"}, 404, "not_found", None),
    ("DELETE", "/api/v1/teams/abc", None, 404, "not_found", None),
    ("PUT", "/api/v1/teams", {"name": "A"}, 405, "method_not_allowed", None),
    ("GET", "/api/v1/no-such-thing", None, 404, "not_found", None),
]


@pytest.mark.parametrize("method,path,body,status,code,field", CASES,
                         ids=[f"{c[0]} {c[1]} {str(c[2])[:30]}" for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(client, headers, method, path, body,
                                                         status, code, field):
    before = _counts()
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, bytes) else {"json": body}
    response = client.open(path, method=method, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    error = response.json["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text
    if field:
        assert field in error["fields"], error
        assert field in error["message"]
    assert _counts() == before


def test_duplicate_names_are_refused_with_the_field(client, headers):
    assert client.post("/api/v1/teams", json={"name": "QA Team"}, headers=headers).status_code == 201
    before = _counts()
    again = client.post("/api/v1/teams", json={"name": "QA Team"}, headers=headers)
    assert again.status_code == 409 and again.json["error"]["fields"] == {"name": "already taken"}
    assert _counts() == before
    client.post("/api/v1/users", json={"username": "carol", "password": "correct-horse-9"},
                headers=headers)
    dup = client.post("/api/v1/users", json={"username": "carol", "password": "correct-horse-9"},
                      headers=headers)
    assert dup.status_code == 409 and "username" in dup.json["error"]["fields"]


def test_secret_names_must_be_env_style(client, headers):
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    response = client.put(f"/api/v1/projects/{project['id']}/secrets/lower-case",
                          json={"value": "v"}, headers=headers)
    assert response.status_code == 422 and "name" in response.json["error"]["fields"]


def test_last_admin_cannot_be_demoted_disabled_or_deleted(client, admin, headers, make_user):
    for body in ({"role": "user"}, {"is_active": False}):
        response = client.patch(f"/api/v1/users/{admin.id}", json=body, headers=headers)
        assert response.status_code == 409 and "last active admin" in response.json["error"]["message"]
    other = make_user("other-admin", role="admin")
    response = client.delete(f"/api/v1/users/{admin.id}", headers=headers)
    assert response.status_code == 409  # not yourself
    assert client.patch(f"/api/v1/users/{other.id}", json={"role": "user"},
                        headers=headers).status_code == 200


def test_unexpected_errors_answer_json_without_a_stack_trace(app, client, headers, monkeypatch):
    from app.services import teams

    def explode(*args, **kwargs):
        raise RuntimeError("database exploded at /secret/path")

    monkeypatch.setattr(teams, "create", explode)
    response = client.post("/api/v1/teams", json={"name": "X"}, headers=headers)
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "exploded" not in response.text and "Traceback" not in response.text
