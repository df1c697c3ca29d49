"""Every mutating action leaves an audit entry; admins read it with filters and pages."""
from app.extensions import db
from app.models import AuditEntry


def _actions():
    return [e.action for e in db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id))]


def test_mutations_record_who_what_which_object_when_and_from_where(client, admin, bearer):
    headers = bearer(admin)
    team = client.post("/api/v1/teams", json={"name": "QA Team"}, headers=headers).json
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    client.post("/api/v1/grants", json={"team_id": team["id"], "project_id": project["id"],
                                        "level": "read_only"}, headers=headers)
    client.put(f"/api/v1/projects/{project['id']}/secrets/DB_PASSWORD",
               json={"value": "hunter2-value"}, headers=headers)
    client.patch(f"/api/v1/teams/{team['id']}", json={"description": "testers"}, headers=headers)
    client.delete(f"/api/v1/teams/{team['id']}", headers=headers)
    assert _actions()[-6:] == ["team.create", "project.create", "grant.create", "secret.create",
                               "team.update", "team.delete"]
    entry = db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "grant.create")).one()
    assert (entry.actor_username, entry.actor_id, entry.target_type, entry.target_id) == (
        "admin", admin.id, "project", project["id"])
    assert entry.address == "127.0.0.1" and entry.at is not None
    assert entry.details == {"team": "QA Team", "level": "read_only"}


def test_secret_values_never_reach_the_audit_log(client, admin, bearer):
    headers = bearer(admin)
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    client.put(f"/api/v1/projects/{project['id']}/secrets/TOKEN", json={"value": "very-secret-42"},
               headers=headers)
    client.put(f"/api/v1/projects/{project['id']}/secrets/TOKEN", json={"value": "very-secret-43"},
               headers=headers)
    dump = client.get("/api/v1/audit?per_page=100", headers=headers).text
    assert "very-secret" not in dump
    listed = client.get(f"/api/v1/projects/{project['id']}/secrets", headers=headers).json
    assert listed["items"][0]["name"] == "TOKEN" and "very-secret" not in str(listed)


def test_audit_filters_and_pagination(client, admin, bearer, make_user):
    headers = bearer(admin)
    for name in ("a-team", "b-team", "c-team"):
        client.post("/api/v1/teams", json={"name": name}, headers=headers)
    page1 = client.get("/api/v1/audit?action=team.&per_page=2", headers=headers).json
    page2 = client.get("/api/v1/audit?action=team.&per_page=2&page=2", headers=headers).json
    assert page1["total"] == 3 and len(page1["items"]) == 2 and len(page2["items"]) == 1
    names = [e["target_name"] for e in page1["items"] + page2["items"]]
    assert names == ["c-team", "b-team", "a-team"]  # newest first
    by_actor = client.get("/api/v1/audit?actor=admin&target_type=team", headers=headers).json
    assert by_actor["total"] == 3
    assert client.get("/api/v1/audit?actor=nobody", headers=headers).json["total"] == 0
    future = client.get("/api/v1/audit?since=2999-01-01T00:00:00", headers=headers).json
    assert future["total"] == 0
    past = client.get("/api/v1/audit?until=2000-01-01T00:00:00Z", headers=headers).json
    assert past["total"] == 0


def test_failed_logins_are_audited_without_the_password(client, admin, login):
    login("admin", "wrong-password-123")
    entry = db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == "login.failure")).one()
    assert entry.target_name == "admin" and entry.actor_id is None
    assert "wrong-password" not in str(entry.details)
