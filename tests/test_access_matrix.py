"""Every /api/v1 route through bearer tokens against anonymous, a user with no grant, a
Read-Only member, a Full Access member, an admin (the spec's QA Team / SE Team example) and the
two asymmetric callers: Full Access on the project with Read-Only on the environment, and the
reverse (tests/access/callers.py). A route registered without a row here fails
`test_every_api_route_has_a_row`.

A row states the five base callers; the asymmetric ones answer as the writer (Full Access on a
deployment through one of the two grants, sight of both, admin-only things refused, no member
of the spec example's teams) unless the row says otherwise: the writer's own user record and
token are a stranger's to them (404)."""
import socket

import pytest

from app.extensions import db
from app.models import Environment, Grant, Project
from app.services import auth, catalog, nodes, registries, users
from tests.access import AREAS
from tests.access.callers import asymmetric_callers
from tests.conftest import STRONG_PASSWORD

ROLES = ("anonymous", "outsider", "reader", "writer", "admin")
ASYMMETRIC = ("full_ro", "ro_full")
NEW_PASSWORD = "another-Strong-pass-42"


def row(*statuses, asymmetric=None):
    """Statuses of the five base callers; `asymmetric`: the two asymmetric callers' status
    where it is not the writer's."""
    statuses = dict(zip(ROLES, statuses, strict=True))
    if asymmetric is not None:
        statuses.update(dict.fromkeys(ASYMMETRIC, asymmetric))
    return statuses


def expected_status(statuses, caller):
    return statuses.get(caller, statuses["writer"]) if caller in ASYMMETRIC else statuses[caller]


EVERYONE = row(401, 200, 200, 200, 200)
ADMIN_ONLY_LIST = row(401, 403, 403, 403, 200)
ADMIN_CREATE = row(401, 403, 403, 403, 201)
# On the shared project/environment: QA (reader) and SE (writer) both see it.
TARGET_VIEW = row(401, 404, 200, 200, 200)
TARGET_CHANGE = row(401, 404, 403, 403, 200)
TARGET_DELETE = row(401, 404, 403, 403, 204)
TARGET_ADD = row(401, 404, 403, 403, 201)
# On the QA team: only its member (reader) sees it.
QA_TEAM_VIEW = row(401, 404, 200, 404, 200)
QA_TEAM_CHANGE = row(401, 404, 403, 404, 200)
QA_TEAM_DELETE = row(401, 404, 403, 404, 204)
# On the writer's own user record.
WRITER_VIEW = row(401, 404, 404, 200, 200, asymmetric=404)
WRITER_CHANGE = row(401, 404, 404, 403, 200, asymmetric=404)
WRITER_DELETE = row(401, 404, 404, 403, 204, asymmetric=404)
HIDDEN_FROM_USERS = row(401, 404, 404, 404, 200)

# (method, rule) -> (path template, JSON body, expected status per role)
MATRIX = {
    ("GET", "/api/v1/openapi.json"): ("/api/v1/openapi.json", None, row(200, 200, 200, 200, 200)),
    ("GET", "/api/v1/me"): ("/api/v1/me", None, EVERYONE),
    ("PATCH", "/api/v1/me"): ("/api/v1/me", {"full_name": "New Name"}, EVERYONE),
    ("POST", "/api/v1/me/password"): (
        "/api/v1/me/password",
        {"current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD},
        row(401, 204, 204, 204, 204),
    ),
    ("GET", "/api/v1/tokens"): ("/api/v1/tokens", None, EVERYONE),
    ("POST", "/api/v1/tokens"): ("/api/v1/tokens", {"name": "ci"}, row(401, 201, 201, 201, 201)),
    ("DELETE", "/api/v1/tokens/<int:token_id>"): (
        "/api/v1/tokens/{writer_token}", None, row(401, 404, 404, 204, 204, asymmetric=404)),
    ("GET", "/api/v1/users"): ("/api/v1/users", None, EVERYONE),
    ("POST", "/api/v1/users"): (
        "/api/v1/users", {"username": "carol", "password": NEW_PASSWORD}, ADMIN_CREATE),
    ("GET", "/api/v1/users/<int:user_id>"): ("/api/v1/users/{writer}", None, WRITER_VIEW),
    ("PATCH", "/api/v1/users/<int:user_id>"): (
        "/api/v1/users/{writer}", {"full_name": "Bob"}, WRITER_CHANGE),
    ("POST", "/api/v1/users/<int:user_id>/password"): (
        "/api/v1/users/{writer}/password", {"new_password": NEW_PASSWORD},
        row(401, 404, 404, 403, 204, asymmetric=404)),
    ("DELETE", "/api/v1/users/<int:user_id>"): ("/api/v1/users/{writer}", None, WRITER_DELETE),
    ("GET", "/api/v1/users/<int:user_id>/tokens"): (
        "/api/v1/users/{service_account}/tokens", None, HIDDEN_FROM_USERS),
    ("POST", "/api/v1/users/<int:user_id>/tokens"): (
        "/api/v1/users/{service_account}/tokens", {"name": "ci", "scope": "deploy"},
        row(401, 404, 404, 404, 201)),
    # Public: a login for a token (the writer's password; any caller).
    ("POST", "/api/v1/auth/token"): (
        "/api/v1/auth/token", {"username": "se-bob", "password": STRONG_PASSWORD},
        row(201, 201, 201, 201, 201)),
    ("GET", "/api/v1/teams"): ("/api/v1/teams", None, EVERYONE),
    ("POST", "/api/v1/teams"): ("/api/v1/teams", {"name": "Frontend Team"}, ADMIN_CREATE),
    ("GET", "/api/v1/teams/<int:team_id>"): ("/api/v1/teams/{qa}", None, QA_TEAM_VIEW),
    ("PATCH", "/api/v1/teams/<int:team_id>"): (
        "/api/v1/teams/{qa}", {"description": "testers"}, QA_TEAM_CHANGE),
    ("DELETE", "/api/v1/teams/<int:team_id>"): ("/api/v1/teams/{qa}", None, QA_TEAM_DELETE),
    ("PUT", "/api/v1/teams/<int:team_id>/members/<int:user_id>"): (
        "/api/v1/teams/{qa}/members/{outsider}", None, QA_TEAM_CHANGE),
    ("DELETE", "/api/v1/teams/<int:team_id>/members/<int:user_id>"): (
        "/api/v1/teams/{qa}/members/{reader}", None, QA_TEAM_DELETE),
    ("GET", "/api/v1/grants"): ("/api/v1/grants", None, ADMIN_ONLY_LIST),
    ("POST", "/api/v1/grants"): (
        "/api/v1/grants", {"team_id": "{qa}", "project_id": "{other_project}", "level": "full"},
        ADMIN_CREATE),
    ("PATCH", "/api/v1/grants/<int:grant_id>"): (
        "/api/v1/grants/{qa_grant}", {"level": "full"}, HIDDEN_FROM_USERS),
    ("DELETE", "/api/v1/grants/<int:grant_id>"): (
        "/api/v1/grants/{qa_grant}", None, row(401, 404, 404, 404, 204)),
    ("GET", "/api/v1/projects/<int:project_id>/secrets"): (
        "/api/v1/projects/{project}/secrets", None, TARGET_CHANGE),
    ("PUT", "/api/v1/projects/<int:project_id>/secrets/<name>"): (
        "/api/v1/projects/{project}/secrets/DB_PASSWORD", {"value": "s3cr3t-value"}, TARGET_CHANGE),
    ("DELETE", "/api/v1/projects/<int:project_id>/secrets/<name>"): (
        "/api/v1/projects/{project}/secrets/API_KEY", None, TARGET_DELETE),
    ("GET", "/api/v1/audit"): ("/api/v1/audit", None, ADMIN_ONLY_LIST),
}
for plural, key in (("projects", "project"), ("environments", "environment")):
    item = f"/api/v1/{plural}/<int:obj_id>"
    path = f"/api/v1/{plural}/{{{key}}}"
    MATRIX.update({
        ("GET", f"/api/v1/{plural}"): (f"/api/v1/{plural}", None, EVERYONE),
        ("POST", f"/api/v1/{plural}"): (f"/api/v1/{plural}", {"name": "newone"}, ADMIN_CREATE),
        ("GET", item): (path, None, TARGET_VIEW),
        ("PATCH", item): (path, {"description": "changed"}, TARGET_CHANGE),
        ("DELETE", item): (path, None, TARGET_DELETE),
        ("GET", item + "/access"): (path + "/access", None, TARGET_VIEW),
    })


# Nodes of the shared environment: whoever may view the environment sees them; admins change them.
NODE = "/api/v1/nodes/{node}"
MATRIX.update({
    ("GET", "/api/v1/environments/<int:environment_id>/nodes"): (
        "/api/v1/environments/{environment}/nodes", None, TARGET_VIEW),
    ("POST", "/api/v1/environments/<int:environment_id>/nodes"): (
        "/api/v1/environments/{environment}/nodes", {"name": "node-2", "host": "10.0.0.2"},
        TARGET_ADD),
    ("GET", "/api/v1/nodes/<int:node_id>"): (NODE, None, TARGET_VIEW),
    ("GET", "/api/v1/nodes/<int:node_id>/allocation"): (NODE + "/allocation", None, TARGET_VIEW),
    ("PATCH", "/api/v1/nodes/<int:node_id>"): (NODE, {"cpus_override": 2.5}, TARGET_CHANGE),
    ("DELETE", "/api/v1/nodes/<int:node_id>"): (NODE, None, TARGET_DELETE),
    ("POST", "/api/v1/nodes/<int:node_id>/rotate-token"): (NODE + "/rotate-token", None, TARGET_CHANGE),
    ("POST", "/api/v1/nodes/<int:node_id>/revoke-token"): (NODE + "/revoke-token", None, TARGET_CHANGE),
    ("POST", "/api/v1/nodes/<int:node_id>/approve-thumbprint"): (
        NODE + "/approve-thumbprint", {"thumbprint": "b" * 64}, TARGET_CHANGE),
    ("POST", "/api/v1/nodes/<int:node_id>/enable"): (NODE + "/enable", None, TARGET_CHANGE),
    ("POST", "/api/v1/nodes/<int:node_id>/disable"): (NODE + "/disable", None, TARGET_CHANGE),
})


# Registries: every user lists them (names, for forms); admins change them and list tags. The
# tags row's registry has nothing listening: the admin passes the access check and gets 503.
REGISTRY = "/api/v1/registries/{registry}"
USERS_REFUSED = row(401, 403, 403, 403, 200)
MATRIX.update({
    ("GET", "/api/v1/registries"): ("/api/v1/registries", None, EVERYONE),
    ("POST", "/api/v1/registries"): (
        "/api/v1/registries", {"name": "private", "url": "https://registry.example.com"}, ADMIN_CREATE),
    ("GET", "/api/v1/registries/<int:registry_id>"): (REGISTRY, None, EVERYONE),
    ("PATCH", "/api/v1/registries/<int:registry_id>"): (
        REGISTRY, {"url": "http://127.0.0.1:5001"}, USERS_REFUSED),
    ("DELETE", "/api/v1/registries/<int:registry_id>"): (REGISTRY, None, row(401, 403, 403, 403, 204)),
    ("GET", "/api/v1/registries/<int:registry_id>/tags"): (
        REGISTRY + "/tags?repository=team/app&pattern=v*", None, row(401, 403, 403, 403, 503)),
})

for _area in AREAS:
    assert not _area.ROWS.keys() & MATRIX.keys(), f"{_area.__name__} repeats rows"
    MATRIX.update(_area.ROWS)


def _api_routes(app):
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_api_route_has_a_row(app):
    routes = _api_routes(app)
    assert routes - MATRIX.keys() == set(), "add these routes to MATRIX with expected statuses"
    assert MATRIX.keys() - routes == set(), "MATRIX lists routes that no longer exist"


@pytest.fixture
def ids(spec_example):
    ex = spec_example
    writer_token, _ = auth.create_token(ex["writer"], ex["writer"], "writer-script")
    service_account = users.create(ex["admin"], "ci-bot", None, kind="service")
    qa_grant = db.session.scalar(
        db.select(Grant).where(Grant.team_id == ex["qa"].id, Grant.project_id == ex["project"].id)
    )
    catalog.put_secret(ex["admin"], ex["project"], "API_KEY", "k-123")
    # An untrusted node with a changed certificate waiting, so approving it can succeed.
    node, _token, _command = nodes.add(ex["admin"], ex["environment"], "node-1", "10.0.0.1")
    node.thumbprint, node.pending_thumbprint, node.status = "a" * 64, "b" * 64, "untrusted"
    db.session.commit()
    registry = registries.create(ex["admin"], "ci-registry", f"http://127.0.0.1:{_closed_port()}",
                                 "ci", "registry-pass-1")
    result = {
        "node": node.id, "registry": registry.id,
        "project": ex["project"].id, "other_project": ex["other_project"].id,
        "environment": ex["environment"].id, "qa": ex["qa"].id, "se": ex["se"].id,
        "reader": ex["reader"].id, "writer": ex["writer"].id, "outsider": ex["outsider"].id,
        "writer_token": writer_token.id, "qa_grant": qa_grant.id,
        "service_account": service_account.id,
    }
    for area in AREAS:
        result.update(area.make_ids(ex, dict(result)))
    return result


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill(value, ids):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


CASES = [
    pytest.param(key, role, id=f"{key[0]} {key[1]} as {role}")
    for key in sorted(MATRIX) for role in ROLES
]


@pytest.mark.parametrize("key,role", CASES)
def test_route_answers_each_role_as_expected(client, ids, spec_example, bearer, key, role):
    path, body, expected = MATRIX[key]
    headers = {} if role == "anonymous" else bearer(spec_example[role])
    response = client.open(path.format(**ids), method=key[0], json=_fill(body, ids),
                           headers=headers)
    assert response.status_code == expected_status(expected, role), response.text
    if response.status_code >= 400:
        assert set(response.json["error"]) == {"code", "message", "fields"}


def _asymmetric_cases():
    """Both asymmetric callers in one case (the matrix's time is its setup), refused ones
    first: a refusal changes nothing. Each in a case of its own where both change something."""
    for key in sorted(MATRIX):
        statuses = {c: expected_status(MATRIX[key][2], c) for c in ASYMMETRIC}
        if key[0] != "GET" and all(status < 400 for status in statuses.values()):
            groups = [(c,) for c in ASYMMETRIC]
        else:
            groups = [tuple(sorted(ASYMMETRIC, key=lambda c: statuses[c] < 400))]
        for group in groups:
            yield pytest.param(key, group, id=f"{key[0]} {key[1]} as {' then '.join(group)}")


@pytest.mark.parametrize("key,group", list(_asymmetric_cases()))
def test_route_answers_the_asymmetric_callers_as_expected(client, ids, spec_example, make_user,
                                                          bearer, key, group):
    path, body, expected = MATRIX[key]
    # Their grants: on the spec example's project and environment and on the deployments
    # area's own (tests/access/deployments.py).
    pairs = [(spec_example["project"], spec_example["environment"]),
             (db.session.get(Project, ids["deploy_project"]),
              db.session.get(Environment, ids["deploy_environment"]))]
    callers = asymmetric_callers(make_user, pairs)
    for caller in group:
        response = client.open(path.format(**ids), method=key[0], json=_fill(body, ids),
                               headers=bearer(callers[caller]))
        assert response.status_code == expected_status(expected, caller), f"{caller}: {response.text}"
        if response.status_code >= 400:
            assert set(response.json["error"]) == {"code", "message", "fields"}
