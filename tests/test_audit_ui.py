"""The audit log page: admins read every entry newest first, filter by who, what, target and
time range, and page through; everyone else gets 403 and no link to it."""
import re
from datetime import UTC, datetime, timedelta

import pytest

from app.extensions import db
from app.models import Project
from app.services import audit, catalog
from app.ui import audit as audit_page

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _entry(actor, action, target_type, name, minutes, details=None):
    entry = audit.record(None, action, target_type, None, details, target_name=name)
    entry.actor_username, entry.at = actor, START + timedelta(minutes=minutes)
    return entry


@pytest.fixture
def entries(app):
    _entry("admin", "project.create", "project", "shop", 0, {"cpus": 1.0})
    _entry("admin", "secret.create", "project", "shop", 10, {"name": "DB_PASSWORD"})
    _entry("se-bob", "deployment.create", "deployment", "pr-1", 20)
    _entry("se-bob", "deployment.delete", "deployment", "pr-1", 30)
    _entry("admin", "project.update", "project", "billing", 40)
    db.session.commit()


def _shown(text):
    """(who, action, target) of each row, top to bottom."""
    return [(who, action, target.strip()) for who, action, target in re.findall(
        r'<td data-label="Who">([^<]*)</td>\s*<td data-label="What"><code>([^<]*)</code></td>\s*'
        r'<td data-label="Target">([^<]*)', text)]


@pytest.fixture
def as_admin(client, login, admin):
    login("admin")
    return client


def test_admin_reads_the_audit_log_newest_first(as_admin, entries):
    page = as_admin.get("/audit")
    assert page.status_code == 200
    # (after the admin's own user.create and login.success, which are today's)
    assert [action for _who, action, _target in _shown(page.text)][-5:] == [
        "project.update", "deployment.delete", "deployment.create", "secret.create", "project.create"]
    assert "2026-12-01 09:40:00 UTC" in page.text
    assert '<a href="/audit">Audit log</a>' in page.text  # in the navigation


@pytest.mark.parametrize(("query", "expected"), [
    ("actor=se-bob", ["deployment.delete", "deployment.create"]),
    ("action=project", ["project.update", "project.create"]),
    ("action=deployment.delete", ["deployment.delete"]),
    ("target_type=project&target=SHO", ["secret.create", "project.create"]),
    ("since=2026-12-01T09:10&until=2026-12-01T09:30", ["deployment.create", "secret.create"]),
    ("actor=admin&since=2026-12-01T09:05&until=2026-12-02T00:00", ["project.update", "secret.create"]),
    ("actor=nobody", []),
])
def test_admin_filters_the_audit_log(as_admin, entries, query, expected):
    page = as_admin.get(f"/audit?{query}&until=2026-12-02T00:00" if "until" not in query
                        else f"/audit?{query}")  # leaves out the admin's own login
    assert page.status_code == 200
    assert [action for _who, action, _target in _shown(page.text)] == expected
    if not expected:
        assert "No entries match these filters." in page.text


def test_a_bad_time_is_named_and_answers_400(as_admin, entries):
    page = as_admin.get("/audit?since=yesterday&until=2026-12-01T09:00")
    assert page.status_code == 400
    assert re.findall(r'data-field="(\w+)"', page.text) == ["since"]
    backwards = as_admin.get("/audit?since=2026-12-01T10:00&until=2026-12-01T09:00")
    assert backwards.status_code == 400
    assert re.findall(r'data-field="(\w+)"', backwards.text) == ["until"]
    assert 'value="yesterday"' in page.text  # what was typed stays


def test_the_audit_log_is_paginated_and_keeps_the_filters(as_admin):
    for number in range(audit_page.PER_PAGE + 3):
        _entry("admin", "project.update", "project", f"p-{number}", number)
    _entry("other", "team.create", "team", "qa", 999)
    db.session.commit()
    first = as_admin.get("/audit?action=project").text
    assert len(_shown(first)) == audit_page.PER_PAGE
    assert 'href="/audit?page=2&amp;action=project"' in first
    second = as_admin.get("/audit?action=project&page=2").text
    assert [target for _w, _a, target in _shown(second)] == ["project p-2", "project p-1", "project p-0"]
    assert "Page 2 of 2 · 53 entries" in second


def test_secret_values_never_reach_the_audit_log_page(as_admin):
    project = catalog.create(None, Project, "shop")
    catalog.put_secret(None, project, "DB_PASSWORD", "pw-never-shown-1")
    page = as_admin.get("/audit?action=secret").text
    assert "secret.create" in page and "pw-never-shown-1" not in page
    # Which secret changed is no secret: it was recorded under a redacted key and read
    # {"secret": "[redacted]"}.
    assert "DB_PASSWORD" in page and "[redacted]" not in page


@pytest.mark.parametrize("who", ["nobody", "qa-anna", "se-bob"])
def test_users_get_403_on_the_audit_log_and_see_no_link(client, login, spec_example, who):
    login(who)
    refused = client.get("/audit")
    assert refused.status_code == 403 and "only admins may read the audit log" in refused.text
    assert "/audit" not in client.get("/").text
