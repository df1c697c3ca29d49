"""Team pages through the test client: every change an admin makes on a team's page is told in
a flash; a member who may only view the team gets 403, naming the action, on every change
posted directly, and nothing is written."""
import html
import re

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry, Grant, Team, TeamMember, User
from app.ui import teams as team_pages
from tests.conftest import csrf_from, rows_of


def _post(client, action, page="/teams", **fields):
    token = csrf_from(client.get(page).text)
    return client.post(action, data={"csrf_token": token, **fields})


def _flashes(text):
    return [(kind, html.unescape(message))
            for kind, message in re.findall(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', text)]


def _counts():
    return rows_of(Team, TeamMember, Grant, User, AuditEntry)


def test_adding_and_removing_members_and_grants_is_told_in_a_flash(client, login, spec_example):
    qa, outsider = spec_example["qa"], spec_example["outsider"]
    project = spec_example["other_project"]
    login("admin")
    url = f"/teams/{qa.id}"
    added = _post(client, f"{url}/members", page=url, user_id=str(outsider.id))
    assert added.headers["Location"] == url
    assert ("ok", "nobody added to team QA Team.") in _flashes(client.get(url).text)

    removed = _post(client, f"{url}/members/{outsider.id}/remove", page=url)
    assert removed.headers["Location"] == url
    assert ("ok", "nobody removed from team QA Team.") in _flashes(client.get(url).text)

    granted = _post(client, f"{url}/grants", page=url, target=f"project:{project.id}", level="full")
    assert granted.headers["Location"] == url
    assert ("ok", "Team QA Team granted Full Access on project billing.") in _flashes(client.get(url).text)

    row = db.session.scalar(select(Grant).where(Grant.project_id == project.id))
    revoked = _post(client, f"/grants/{row.id}/remove", page=url)
    assert revoked.headers["Location"] == url
    assert ("ok", "Team QA Team no longer has access to project billing.") in _flashes(
        client.get(url).text)


def _refusal(response):
    found = re.search(r"<p>([^<]*(?:may not|only admins)[^<]*)</p>", response.text)
    return html.unescape(found[1]) if found else None


@pytest.mark.parametrize(("endpoint", "path", "message"), [
    ("ui.team_remove_member", "/teams/{qa}/members/{reader}/remove",
     "you may not remove members of this team; ask an admin for access"),
    ("ui.team_delete", "/teams/{qa}/delete", "you may not delete this team; ask an admin for access"),
    ("ui.team_add_member", "/teams/{qa}/members",
     "you may not add members to this team; ask an admin for access"),
    ("ui.team_add_grant", "/teams/{qa}/grants",
     "you may not grant access for this team; ask an admin for access"),
    ("ui.admin_toggle_user", "/admin/users/{writer}/active", "only admins may manage users"),
    ("ui.admin_create_user", "/admin/users", "only admins may manage users"),
    ("ui.team_create", "/teams", "you may not create this team; ask an admin for access"),
])
def test_a_member_who_may_only_view_gets_403_naming_the_action(client, login, spec_example,
                                                              endpoint, path, message):
    ex = spec_example
    login("qa-anna")  # a member of QA Team: sees it, may not change it
    before = _counts()
    response = _post(client, path.format(qa=ex["qa"].id, reader=ex["reader"].id,
                                         writer=ex["writer"].id),
                     user_id=str(ex["outsider"].id), target=f"project:{ex['project'].id}",
                     level="full", name="x", username="x", password="long-enough-pw-1")
    assert response.status_code == 403, (endpoint, response.status_code, _flashes(response.text))
    assert _refusal(response) == message
    assert _counts() == before


def test_every_team_and_user_change_is_covered(app):
    posts = {rule.endpoint for rule in app.url_map.iter_rules() if "POST" in rule.methods
             and app.view_functions[rule.endpoint].__module__ == team_pages.__name__}
    assert posts - {"ui.grant_remove"} == {
        "ui.team_remove_member", "ui.team_delete", "ui.team_add_member", "ui.team_add_grant",
        "ui.admin_toggle_user", "ui.admin_create_user", "ui.team_create"}


def test_a_grant_a_user_may_not_see_answers_404(client, login, spec_example):
    grant = db.session.scalar(select(Grant).where(Grant.team_id == spec_example["qa"].id))
    login("qa-anna")
    before = _counts()
    assert _post(client, f"/grants/{grant.id}/remove").status_code == 404
    assert _counts() == before


def _problem(text):
    found = re.search(r'data-testid="form-error">\s*<p class="flash flash-error">([^<]*)</p>', text)
    return (html.unescape(found.group(1)) if found else None,
            re.findall(r'<li data-field="(\w+)">', text))


def test_bad_input_on_team_user_and_token_forms_is_shown_with_the_form_and_writes_nothing(
        client, login, spec_example):
    ex = spec_example
    login("admin")
    before = _counts()
    empty_name = _post(client, "/teams", name="", description="testers")
    assert empty_name.status_code == 422
    assert _problem(empty_name.text) == ("Name: This field is required.", ["name"])
    assert 'value="testers"' in empty_name.text  # what was typed stays
    taken = _post(client, "/teams", name="QA Team")
    assert taken.status_code == 409
    assert _problem(taken.text) == ("a team named 'QA Team' exists; choose another name", ["name"])

    weak = _post(client, "/admin/users", page="/admin/users", username="carol",
                 password="carol-is-my-name", role="user")
    assert weak.status_code == 422
    assert _problem(weak.text) == ("password is too weak: do not include the username", ["password"])
    assert 'value="carol"' in weak.text and "carol-is-my-name" not in weak.text

    url = f"/teams/{ex['qa'].id}"
    twice = _post(client, f"{url}/grants", page=url, target=f"project:{ex['project'].id}", level="full")
    assert twice.status_code == 409 and _problem(twice.text)[0].startswith(
        "team 'QA Team' already has a grant on this project")
    stranger = _post(client, f"{url}/members", page=url, user_id="99999")
    assert stranger.status_code == 422 and _problem(stranger.text)[1] == ["user_id"]

    long_token = _post(client, "/settings/tokens", page="/settings", name="t" * 65)
    assert long_token.status_code == 422 and _problem(long_token.text)[1] == ["name"]
    assert _counts() == before
