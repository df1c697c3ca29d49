"""A change refused for lack of rights is the 403 page and says what was refused: "you may not
delete this service", never "manage" or "deploy" for a delete (issue 15)."""
import html
import re

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import (
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
from app.services import catalog
from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step
from tests.access.deployments import registry as make_registry
from tests.access.pipelines import make_catalog
from tests.conftest import csrf_from, rows_of


@pytest.fixture
def ids(spec_example):
    rows = make_catalog()
    node = add_node(spec_example["environment"], "node-1")
    run = ProvisioningRun(node_id=node.id, node_name=node.name, playbook="onboard_node", status="running")
    db.session.add(run)
    db.session.commit()
    return {"registry": make_registry("team").id, "service": rows["db"].id,
            "plugin": rows["mkdb"].id, "project": spec_example["project"].id,
            "environment": spec_example["environment"].id, "node": node.id, "run": run.id}


@pytest.mark.parametrize(("path", "message"), [
    ("/services/{service}/delete", "you may not delete this service"),
    ("/services/{service}", "you may not change this service"),
    ("/plugins/{plugin}/delete", "you may not delete this plugin"),
    ("/plugins/{plugin}", "you may not change this plugin"),
    ("/projects/{project}/pipeline/import", "you may not import a pipeline into this project"),
    ("/environments/{environment}/settings", "you may not change this environment"),
    ("/nodes/{node}/delete", "you may not delete this node"),
    ("/nodes/{node}/disable", "you may not disable this node"),
    ("/nodes/{node}/rotate-token", "you may not rotate the token of this node"),
])
def test_a_refused_change_answers_403_naming_the_action(client, login, ids, path, message):
    login("se-bob")  # Full Access on the project and the environment: still no admin
    token = csrf_from(client.get("/").text)
    response = client.post(path.format(**ids), data={"csrf_token": token, "name": "x"})
    assert response.status_code == 403
    assert f"{message}; ask an admin for access" in html.unescape(response.text)
    assert re.search(r"you may not (manage|deploy) ", response.text) is None


def _counts():
    return rows_of(AuditEntry, Deployment, Environment, Grant, Node, Project, ProjectSecret, Team,
                   TeamMember, User)


# What a user may do on their own (their session, their tokens) or, with Full Access, to
# deployments: left out of the walk below for the users who may.
OWN = {"ui.login", "ui.logout", "ui.create_token", "ui.revoke_token"}
DEPLOYING = {"ui.deployment_create", "ui.deployment_clone", "ui.deployment_delete",
             "ui.deployment_extend", "ui.deployment_retry"}


@pytest.mark.parametrize(("who", "allowed"), [("qa-anna", OWN), ("se-bob", OWN | DEPLOYING)])
def test_every_form_post_a_user_may_not_make_answers_403_or_404_and_writes_nothing(
        app, client, login, spec_example, ids, who, allowed):
    ex = spec_example
    catalog.put_secret(None, ex["project"], "DB_PASSWORD", "pw-1")
    node = db.session.get(Node, ids["node"])
    version = pipeline_version(ex["project"], [service_step("web")])
    deployment = add_deployment(version, ex["environment"], node, "pr-1", status="failed")
    grant = db.session.scalar(select(Grant).where(Grant.project_id == ex["project"].id))
    values = {**{f"{k}_id": v for k, v in ids.items()}, "deployment_id": deployment.id,
              "team_id": ex["qa"].id, "user_id": ex["outsider"].id, "grant_id": grant.id,
              "name": "DB_PASSWORD", "token_id": 1}
    login(who)
    token = csrf_from(client.get("/").text)
    before = _counts()
    walked = 0
    for rule in app.url_map.iter_rules():
        if "POST" not in rule.methods or not rule.endpoint.startswith("ui.") or rule.endpoint in allowed:
            continue
        path = re.sub(r"<(?:int:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)
        response = client.post(path, data={
            "csrf_token": token, "name": "x1", "value": "v", "url": "http://x", "level": "full",
            "team_id": str(ex["se"].id), "user_id": str(ex["outsider"].id), "username": "x1",
            "password": "long-enough-pw-1", "target": f"project:{ex['other_project'].id}",
            "project_id": str(ex["project"].id), "environment_id": str(ex["environment"].id),
            "base_domain": "x.io", "cleanup_minutes": "60", "host": "10.0.0.7", "port": "5000",
            "thumbprint": "b" * 64, "yaml": "nodes: []"})
        assert response.status_code in (403, 404), (rule.endpoint, response.status_code)
        walked += 1
    assert walked >= 35
    assert _counts() == before
