"""Projects carry the limits every deployment of theirs gets (cpus, memory_mb) and may
override the environment's cleanup_minutes; null goes back to the environment's default."""
import pytest

from app.extensions import db
from app.models import AuditEntry, Environment, Project
from app.services import catalog
from app.services.errors import ValidationFailed


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


def _counts():
    return tuple(db.session.scalar(db.select(db.func.count()).select_from(m)) for m in (Project, AuditEntry))


def _audit(action):
    return db.session.scalars(db.select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)).all()


def test_a_project_has_default_limits_and_no_cleanup_override(client, headers):
    response = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers)
    assert response.status_code == 201, response.text
    project = response.json
    assert (project["cpus"], project["memory_mb"], project["cleanup_minutes"]) == (1.0, 1024, None)
    assert client.get(f"/api/v1/projects/{project['id']}", headers=headers).json == project
    assert _audit("project.create")[0].details == {"cpus": 1.0, "memory_mb": 1024, "cleanup_minutes": None}


def test_limits_are_set_at_creation_and_changed_later(client, headers):
    project = client.post("/api/v1/projects", headers=headers, json={
        "name": "shop", "cpus": 2, "memory_mb": 4096, "cleanup_minutes": 60}).json
    assert (project["cpus"], project["memory_mb"], project["cleanup_minutes"]) == (2.0, 4096, 60)
    url = f"/api/v1/projects/{project['id']}"
    changed = client.patch(url, json={"cpus": 0.5, "memory_mb": 512}, headers=headers)
    assert changed.status_code == 200, changed.text
    limits = (changed.json["cpus"], changed.json["memory_mb"], changed.json["cleanup_minutes"])
    assert limits == (0.5, 512, 60)
    back = client.patch(url, json={"cleanup_minutes": None}, headers=headers)
    assert back.status_code == 200 and back.json["cleanup_minutes"] is None
    assert back.json["cpus"] == 0.5  # left out: kept
    updates = _audit("project.update")
    assert [e.details for e in updates] == [{"cpus": [2.0, 0.5], "memory_mb": [4096, 512]},
                                            {"cleanup_minutes": [60, None]}]


def test_the_bounds_are_inclusive(client, headers):
    low = client.post("/api/v1/projects", headers=headers, json={
        "name": "small", "cpus": 0.05, "memory_mb": 16, "cleanup_minutes": 5})
    high = client.post("/api/v1/projects", headers=headers, json={
        "name": "large", "cpus": 256, "memory_mb": 4194304, "cleanup_minutes": 525600})
    assert (low.status_code, high.status_code) == (201, 201), (low.text, high.text)


BAD = [
    ({"cpus": 0.04}, "cpus"),
    ({"cpus": 257}, "cpus"),
    ({"cpus": "1"}, "cpus"),
    ({"cpus": True}, "cpus"),
    ({"memory_mb": 15}, "memory_mb"),
    ({"memory_mb": 4194305}, "memory_mb"),
    ({"memory_mb": 512.5}, "memory_mb"),
    ({"cleanup_minutes": 4}, "cleanup_minutes"),
    ({"cleanup_minutes": 525601}, "cleanup_minutes"),
    ({"cleanup_minutes": "60"}, "cleanup_minutes"),
    ({"base_domain": "example.com"}, "base_domain"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f"{f}-{i}" for i, (_c, f) in enumerate(BAD)])
def test_bad_limits_are_refused_naming_the_field_and_write_nothing(client, headers, change, field):
    before = _counts()
    response = client.post("/api/v1/projects", json={"name": "shop", **change}, headers=headers)
    assert response.status_code == 422 and field in response.json["error"]["fields"], response.text
    assert _counts() == before
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    before = _counts()
    response = client.patch(f"/api/v1/projects/{project['id']}", json=change, headers=headers)
    assert response.status_code == 422 and field in response.json["error"]["fields"], response.text
    assert _counts() == before
    assert client.get(f"/api/v1/projects/{project['id']}", headers=headers).json == project


@pytest.mark.parametrize("field", ["cpus", "memory_mb"])
def test_limits_cannot_be_null(client, headers, field):
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    response = client.patch(f"/api/v1/projects/{project['id']}", json={field: None}, headers=headers)
    assert response.status_code == 422 and field in response.json["error"]["fields"]


def test_the_service_checks_limits_too(admin):
    # The UI and the CLI call the service directly, without the API's schema.
    for settings, field in (({"cpus": 0}, "cpus"), ({"cpus": True}, "cpus"), ({"memory_mb": 8}, "memory_mb"),
                            ({"memory_mb": 64.0}, "memory_mb"), ({"cleanup_minutes": 1}, "cleanup_minutes")):
        with pytest.raises(ValidationFailed) as caught:
            catalog.create(admin, Project, "shop", **settings)
        assert field in caught.value.fields
    project = catalog.create(admin, Project, "shop", cleanup_minutes=90)
    catalog.update(admin, project, cpus=3)
    assert (project.cpus, project.cleanup_minutes) == (3.0, 90)  # None-less update keeps it
    catalog.update(admin, project, cleanup_minutes=None)
    assert project.cleanup_minutes is None


def test_an_environment_keeps_its_cleanup_minutes_when_given_null(client, headers, admin):
    environment = catalog.create(admin, Environment, "staging", cleanup_minutes=60)
    response = client.patch(f"/api/v1/environments/{environment.id}", json={"cleanup_minutes": None},
                            headers=headers)
    assert response.status_code == 200 and response.json["cleanup_minutes"] == 60
    assert "cpus" not in response.json
