"""Every UI (non-API) route × caller through cookie sessions and CSRF (issue 17): anonymous, a
member of another team, Read-Only, Full Access, admin, and the asymmetric grants (Full Access on
the project with Read-Only on the environment, and the reverse). A route registered without a
row in MATRIX fails `test_every_ui_route_has_a_row`.

For each caller, one walk over the app's route table (one login, one set of objects: the walk
must stay fast): a GET answers what its row says (302 to the login page for anonymous callers);
a POST with a valid CSRF token that the caller may not make answers 403, or 404 when the id is
one the caller cannot see, and writes nothing; every POST without the CSRF token is refused
(400) before anything else runs, for every caller. Then the POSTs the caller may make (ALLOWED)
are sent, removals last and logout at the very end: none may be refused (401, 403, 404) or
fail (5xx). What they do has tests of their own (tests/test_*_ui.py).
"""
import re

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import (
    AccessLevel,
    AuditEntry,
    Deployment,
    Environment,
    Grant,
    Node,
    Project,
    ProjectSecret,
    ProvisioningRun,
    Team,
    TeamMember,
    User,
)
from app.services import auth, catalog
from tests.access.callers import ASYMMETRIC, asymmetric_callers, user_in_team
from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step
from tests.access.deployments import registry as make_registry
from tests.access.pipelines import make_catalog
from tests.conftest import csrf_from, rows_of

CALLERS = ("anonymous", "other", "reader", "writer", "full_ro", "ro_full", "admin")
ALLOWED = "allowed"           # a POST the caller may make: not sent by the walk
LOGIN = 302                   # the login page, for anonymous callers


def row(*statuses):
    return dict(zip(CALLERS, statuses, strict=True))


# GET pages
PUBLIC = row(200, 200, 200, 200, 200, 200, 200)
LOGGED_IN = row(LOGIN, 200, 200, 200, 200, 200, 200)
ADMIN_PAGE = row(LOGIN, 403, 403, 403, 403, 403, 200)
# The shared project / environment / deployment: everyone with a grant sees it, the other team
# does not (answered as if it did not exist).
SHARED_VIEW = row(LOGIN, 404, 200, 200, 200, 200, 200)
SHARED_ADMIN_PAGE = row(LOGIN, 404, 403, 403, 403, 403, 200)
# The QA team: its member (reader) and admins see it.
QA_TEAM_VIEW = row(LOGIN, 404, 200, 404, 404, 404, 200)

# POSTs
OWN = row(LOGIN, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED)
ADMIN_ONLY = row(LOGIN, 403, 403, 403, 403, 403, ALLOWED)
SHARED_ADMIN_ONLY = row(LOGIN, 404, 403, 403, 403, 403, ALLOWED)
QA_TEAM_ADMIN_ONLY = row(LOGIN, 404, 403, 404, 404, 404, ALLOWED)
# A deployment's actions need Full Access on its project or its environment (and sight of both).
DEPLOY = row(LOGIN, 404, 403, ALLOWED, ALLOWED, ALLOWED, ALLOWED)
# A token: its owner's and admins' (as DELETE /api/v1/tokens/<id>).
WRITER_TOKEN = row(LOGIN, 404, 404, ALLOWED, 404, 404, ALLOWED)
# Grants by id and provisioning runs are admins' business: hidden from everyone else (as the API).
HIDDEN = row(LOGIN, 404, 404, 404, 404, 404, ALLOWED)

# (method, rule) -> (path values beyond the defaults, expected status per caller)
MATRIX = {
    ("GET", "/"): LOGGED_IN,
    ("GET", "/login"): row(200, 302, 302, 302, 302, 302, 302),
    # The form's user name and password are wrong (the sign-in itself: tests/test_auth.py).
    ("POST", "/login"): row(401, 302, 302, 302, 302, 302, 302),
    ("POST", "/logout"): OWN,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/static/<path:filename>"): PUBLIC,
    # Caddy's page for a host without a ready deployment: found by Host alone, the same answer
    # for everyone (its content: tests/security/test_exposure.py).
    ("GET", "/_nullops/ingress-page"): row(404, 404, 404, 404, 404, 404, 404),
    ("GET", "/settings"): LOGGED_IN,
    ("POST", "/settings/tokens"): OWN,
    ("POST", "/settings/tokens/<int:token_id>/revoke"): WRITER_TOKEN,
    ("GET", "/admin/users"): ADMIN_PAGE,
    ("POST", "/admin/users"): ADMIN_ONLY,
    ("POST", "/admin/users/<int:user_id>/active"): ADMIN_ONLY,
    ("GET", "/audit"): ADMIN_PAGE,
    # Deployments
    ("GET", "/deployments"): LOGGED_IN,
    ("GET", "/deployments/new"): LOGGED_IN,
    ("POST", "/deployments/new"): DEPLOY,
    ("GET", "/deployments/<int:deployment_id>"): SHARED_VIEW,
    ("GET", "/deployments/<int:deployment_id>/history"): SHARED_VIEW,
    ("GET", "/deployments/<int:deployment_id>/status"): SHARED_VIEW,
    ("POST", "/deployments/<int:deployment_id>/clone"): DEPLOY,
    ("POST", "/deployments/<int:deployment_id>/delete"): DEPLOY,
    ("POST", "/deployments/<int:deployment_id>/extend"): DEPLOY,
    ("POST", "/deployments/<int:deployment_id>/retry"): DEPLOY,
    # A WebSocket: refused inside the handshake, tested over a real socket.
    ("GET", "/deployments/<int:deployment_id>/logs/<step_id>/follow"): "tests/controller/test_log_follow.py",
    # Environments and nodes
    ("GET", "/environments"): LOGGED_IN,
    ("POST", "/environments"): ADMIN_ONLY,
    ("GET", "/environments/<int:environment_id>"): SHARED_VIEW,
    ("POST", "/environments/<int:environment_id>/nodes"): SHARED_ADMIN_ONLY,
    ("POST", "/environments/<int:environment_id>/nodes/provision"): SHARED_ADMIN_ONLY,
    ("POST", "/environments/<int:environment_id>/settings"): SHARED_ADMIN_ONLY,
    ("POST", "/environments/<int:environment_id>/upgrade-agents"): SHARED_ADMIN_ONLY,
    ("GET", "/nodes/<int:node_id>"): SHARED_VIEW,
    ("GET", "/nodes/<int:node_id>/provisioning"): SHARED_ADMIN_PAGE,
    ("POST", "/nodes/<int:node_id>/approve-thumbprint"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/decommission"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/delete"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/disable"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/enable"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/provision/retry"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/revoke-token"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/rotate-token"): SHARED_ADMIN_ONLY,
    ("POST", "/nodes/<int:node_id>/settings"): SHARED_ADMIN_ONLY,
    ("POST", "/provisioning-runs/<int:run_id>/cancel"): HIDDEN,
    # Projects, their grants, secrets and pipeline
    ("GET", "/projects"): LOGGED_IN,
    ("POST", "/projects"): ADMIN_ONLY,
    ("GET", "/projects/<int:project_id>"): SHARED_VIEW,
    ("POST", "/projects/<int:project_id>"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/delete"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/grants"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/grants/<int:grant_id>"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/grants/<int:grant_id>/remove"): SHARED_ADMIN_ONLY,
    ("GET", "/projects/<int:project_id>/pipeline"): SHARED_VIEW,
    ("POST", "/projects/<int:project_id>/pipeline/import"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/secrets"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/secrets/<name>/delete"): SHARED_ADMIN_ONLY,
    ("POST", "/projects/<int:project_id>/secrets/<name>/replace"): SHARED_ADMIN_ONLY,
    ("POST", "/grants/<int:grant_id>/remove"): HIDDEN,
    # The catalog: everyone logged in reads services and plugins; registries (URLs, user names)
    # are admins' alone; admins change them all.
    ("GET", "/registries"): ADMIN_PAGE,
    ("POST", "/registries"): ADMIN_ONLY,
    ("GET", "/registries/<int:registry_id>"): ADMIN_PAGE,
    ("POST", "/registries/<int:registry_id>"): ADMIN_ONLY,
    ("POST", "/registries/<int:registry_id>/delete"): ADMIN_ONLY,
    ("GET", "/services"): LOGGED_IN,
    ("POST", "/services"): ADMIN_ONLY,
    ("GET", "/services/new"): ADMIN_PAGE,
    ("GET", "/services/<int:service_id>"): LOGGED_IN,
    ("POST", "/services/<int:service_id>"): ADMIN_ONLY,
    ("POST", "/services/<int:service_id>/delete"): ADMIN_ONLY,
    ("GET", "/plugins"): LOGGED_IN,
    ("POST", "/plugins"): ADMIN_ONLY,
    ("GET", "/plugins/new"): ADMIN_PAGE,
    ("GET", "/plugins/<int:plugin_id>"): LOGGED_IN,
    ("POST", "/plugins/<int:plugin_id>"): ADMIN_ONLY,
    ("POST", "/plugins/<int:plugin_id>/delete"): ADMIN_ONLY,
    # Teams (the QA team's pages)
    ("GET", "/teams"): LOGGED_IN,
    ("POST", "/teams"): ADMIN_ONLY,
    ("GET", "/teams/<int:team_id>"): QA_TEAM_VIEW,
    ("POST", "/teams/<int:team_id>/delete"): QA_TEAM_ADMIN_ONLY,
    ("POST", "/teams/<int:team_id>/grants"): QA_TEAM_ADMIN_ONLY,
    ("POST", "/teams/<int:team_id>/members"): QA_TEAM_ADMIN_ONLY,
    ("POST", "/teams/<int:team_id>/members/<int:user_id>/remove"): QA_TEAM_ADMIN_ONLY,
}

# A refused sign-in is audited (login.failed): the one refusal that writes.
AUDITED_REFUSALS = {"/login"}
# Path values for one rule that differ from the world's: two routes remove a grant by id.
OVERRIDES = {"/grants/<int:grant_id>/remove": {"grant_id": "se_grant_id"}}

# What every form field a handler may read is filled with: valid enough to reach the access
# check; the refusal must come first anyway.
FORM = {"name": "x1", "value": "v", "url": "http://127.0.0.1:9", "level": "full", "username": "x1",
        "password": "long-enough-pw-1", "base_domain": "x.io", "cleanup_minutes": "60",
        "host": "10.0.0.7", "port": "5000", "thumbprint": "b" * 64, "yaml": "nodes: []"}


def _ui_routes(app):
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            if not rule.rule.startswith("/api/v1") for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_ui_route_has_a_row(app):
    routes = _ui_routes(app)
    assert routes - MATRIX.keys() == set(), "add these UI routes to MATRIX with expected statuses"
    assert MATRIX.keys() - routes == set(), "MATRIX lists UI routes that no longer exist"


@pytest.fixture
def world(spec_example, make_user):
    """The spec's example plus the other team and the two asymmetric grants; {name: value}
    for the path templates."""
    ex = spec_example
    project, environment = ex["project"], ex["environment"]
    prod = Environment(name="prod")
    db.session.add(prod)
    db.session.commit()
    full = AccessLevel.FULL
    user_in_team(make_user, "bill", "Billing Team", [({"project_id": ex["other_project"].id}, full),
                                                     ({"environment_id": prod.id}, full)])
    asymmetric_callers(make_user, [(project, environment)])
    rows = make_catalog()
    node = add_node(environment, "node-1")
    run = ProvisioningRun(node_id=node.id, node_name=node.name, playbook="onboard_node", status="running")
    db.session.add(run)
    db.session.commit()
    catalog.put_secret(None, project, "DB_PASSWORD", "pw-1")
    version = pipeline_version(project, [service_step("web")])
    deployment = add_deployment(version, environment, node, "pr-1", status="failed")
    token, _ = auth.create_token(ex["writer"], ex["writer"], "writer-token")
    grant, se_grant = (db.session.scalar(select(Grant).where(Grant.project_id == project.id,
                                                             Grant.team_id == team.id))
                       for team in (ex["qa"], ex["se"]))
    return {"deployment_id": deployment.id, "environment_id": environment.id, "node_id": node.id,
            "run_id": run.id, "project_id": project.id, "grant_id": grant.id, "se_grant_id": se_grant.id,
            "name": "DB_PASSWORD",
            "registry_id": make_registry("team").id, "service_id": rows["db"].id,
            "plugin_id": rows["mkdb"].id, "team_id": ex["qa"].id, "user_id": ex["reader"].id,
            "token_id": token.id, "step_id": "web", "filename": "app.css",
            "form": {**FORM, "team_id": str(ex["se"].id), "user_id": str(ex["outsider"].id),
                     "target": f"project:{ex['other_project'].id}", "project_id": str(project.id),
                     "environment_id": str(environment.id)}}


USERNAMES = {"other": "bill", "reader": "qa-anna", "writer": "se-bob", "admin": "admin",
             **{caller: username for caller, (username, _team, _levels) in ASYMMETRIC.items()}}


def _counts():
    return rows_of(AuditEntry, Deployment, Environment, Grant, Node, Project, ProjectSecret, Team,
                   TeamMember, User)


def _path(rule, world):
    values = {**world, **{k: world[v] for k, v in OVERRIDES.get(rule, {}).items()}}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule)


@pytest.mark.parametrize("caller", CALLERS)
def test_each_ui_route_answers_the_caller_as_its_row_says(client, login, world, caller):
    if caller != "anonymous":
        assert login(USERNAMES[caller]).status_code == 302
    token = csrf_from(client.get("/login").text if caller == "anonymous" else client.get("/settings").text)
    before = _counts()
    wrong, walked = [], 0
    for (method, rule), expected in sorted(MATRIX.items()):
        if isinstance(expected, str):  # tested elsewhere: that test must exist
            continue
        want = expected[caller]
        path = _path(rule, world)
        if method == "GET":
            got = client.get(path)
        else:
            # Without the token: refused before any other check, whoever asks.
            if (status := client.post(path, data=world["form"]).status_code) != 400:
                wrong.append(f"POST {rule} without CSRF: {status}, not 400")
            if want == ALLOWED:
                walked += 1
                continue
            got = client.post(path, data={**world["form"], "csrf_token": token})
        walked += 1
        if rule in AUDITED_REFUSALS:
            before = _counts()
        if got.status_code != want:
            wrong.append(f"{method} {rule}: {got.status_code}, not {want}")
        elif want == LOGIN and caller == "anonymous" and "/login" not in got.headers["Location"]:
            wrong.append(f"{method} {rule}: redirects to {got.headers['Location']}, not the login page")
    assert _counts() == before, "a refused request wrote something"
    assert walked == sum(1 for v in MATRIX.values() if not isinstance(v, str))

    def last(key):  # removals after everything else, deletions after those, logout at the end
        rule = key[1]
        return (rule == "/logout", rule.endswith(("/delete", "/decommission")),
                rule.endswith(("/remove", "/revoke", "/revoke-token")), rule)

    mine = sorted((key for key, v in MATRIX.items() if not isinstance(v, str) and key[0] == "POST"
                   and v[caller] == ALLOWED), key=last)
    for method, rule in mine:
        got = client.post(_path(rule, world), data={**world["form"], "csrf_token": token})
        if got.status_code in (401, 403, 404) or got.status_code >= 500:
            wrong.append(f"{method} {rule} (allowed): {got.status_code}")
    assert not wrong, f"{caller}:\n" + "\n".join(wrong)


def test_the_websocket_rows_point_at_existing_tests():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    for target in (v for v in MATRIX.values() if isinstance(v, str)):
        assert (root / target).is_file(), target
