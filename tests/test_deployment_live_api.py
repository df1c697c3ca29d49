"""GET /deployments/<id>/live, what the deployment page polls: status, step states and each
service's health from the events the controller stored (restarts, a failing readiness probe's
message); the same access as every read, and one query."""
import html
import json
import re

import pytest
from sqlalchemy import event

from app.api.schemas.deployments import DeploymentLive
from app.controller import deployments as controller_deployments
from app.extensions import db
from tests.access.deployments import (
    add_deployment,
    add_node,
    pipeline_version,
    plugin_step,
    service_step,
)

API = "/api/v1/deployments"


@pytest.fixture
def ex(spec_example):
    return spec_example


@pytest.fixture
def version(ex):
    return pipeline_version(ex["project"], [service_step("web", tag="1.4"),
                                            service_step("db", tag="15", exposed=[])])


@pytest.fixture
def node(ex):
    return add_node(ex["environment"], "node-1")


def _event(deployment, name, **data):
    """An agent event about `deployment`, stored as the controller stores it."""
    from agent import protocol

    kind = {"progress": protocol.RUN_PROGRESS, "status": protocol.DEPLOYMENT_STATUS}[name]
    controller_deployments.apply_event(deployment.node_id, kind,
                                       {"deployment_id": deployment.agent_id, **data})
    db.session.expire_all()


def test_a_reader_sees_steps_and_health_follow_the_run(client, bearer, ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="deploying",
                                run_id="run-1")
    live = f"{API}/{deployment.id}/live"
    body = client.get(live, headers=bearer(ex["reader"])).json
    assert DeploymentLive.model_validate(body)
    assert body["status"] == "deploying"
    assert body["services"] == {"web": {"health": "waiting", "message": None, "restarts": 0},
                                "db": {"health": "waiting", "message": None, "restarts": 0}}

    _event(deployment, "progress", run_id="run-1", status="running", step_id="db", step_status="done")
    _event(deployment, "progress", run_id="run-1", status="running", step_id="web",
           step_status="running")
    body = client.get(live, headers=bearer(ex["reader"])).json
    assert body["steps"] == {"db": "ready", "web": "starting"}

    _event(deployment, "progress", run_id="run-1", status="running", step_id="web",
           step_status="done")
    _event(deployment, "status", status="ready", services={})
    body = client.get(live, headers=bearer(ex["reader"])).json
    assert body["status"] == "ready" and body["steps"] == {"db": "ready", "web": "ready"}


def test_a_failing_readiness_probe_shows_the_agent_s_message(client, bearer, ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="deploying",
                                run_id="run-1")
    probe = "step web: not ready within 60 s (http :8000/health): connection refused"
    _event(deployment, "progress", run_id="run-1", status="running", step_id="web",
           step_status="failed", message=probe)
    _event(deployment, "status", status="failed", message=probe)
    body = client.get(f"{API}/{deployment.id}/live", headers=bearer(ex["writer"])).json
    assert body["status"] == "failed"
    assert body["services"]["web"] == {"health": "failing", "message": probe, "restarts": 0}
    assert body["services"]["db"]["health"] == "stopped"


def test_restarts_by_the_agent_are_counted_per_service(client, bearer, ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="ready",
                                run_id="run-1", progress={"web": "done", "db": "done"})
    _event(deployment, "status", status="ready", services={}, healed=["web"])
    _event(deployment, "status", status="degraded", message="could not recreate db: no image")
    body = client.get(f"{API}/{deployment.id}/live", headers=bearer(ex["reader"])).json
    assert body["services"]["db"] == {"health": "restarting",
                                      "message": "could not recreate db: no image", "restarts": 0}
    _event(deployment, "status", status="ready", services={}, healed=["db", "web"])
    body = client.get(f"{API}/{deployment.id}/live", headers=bearer(ex["reader"])).json
    assert body["services"] == {"web": {"health": "ready", "message": None, "restarts": 2},
                                "db": {"health": "ready", "message": None, "restarts": 1}}


def test_an_outsider_gets_404_and_a_deleted_deployment_says_so(client, bearer, ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="deleted")
    live = f"{API}/{deployment.id}/live"
    assert client.get(live, headers=bearer(ex["outsider"])).status_code == 404
    assert client.get(f"{API}/999999/live", headers=bearer(ex["admin"])).status_code == 404
    assert client.get(live).status_code == 401
    body = client.get(live, headers=bearer(ex["reader"])).json
    assert body["status"] == "deleted" and body["services"]["web"]["health"] == "removed"


def test_the_live_state_is_one_query(client, bearer, ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="ready")
    live = f"{API}/{deployment.id}/live"
    headers = bearer(ex["reader"])
    client.get(live, headers=headers)  # the version's service steps are read once per process
    statements = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert client.get(live, headers=headers).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    touching = [s for s in statements if "deployment_events" in s or "FROM deployments" in s]
    assert len(touching) == 1, statements


def test_a_plugin_step_shows_its_progress_and_the_graph_gets_every_step(client, bearer, login, ex, node):
    """Plugins have no health: their state is the run's word on them. The page embeds the
    version as the graph draws it: steps, their dependencies and the editor's positions."""
    version = pipeline_version(ex["project"], [
        service_step("db", tag="15", exposed=[]), plugin_step("mkdb", depends_on=["db"]),
        {**service_step("web", tag="1.4"), "depends_on": ["mkdb"]}])
    version.definition = {"nodes": [{"id": "db", "service": "postgres", "position": {"x": 10, "y": 20}}],
                          "edges": []}
    db.session.commit()
    deployment = add_deployment(version, ex["environment"], node, "d1", status="deploying",
                                run_id="run-1")
    _event(deployment, "progress", run_id="run-1", status="running", step_id="db", step_status="done")
    _event(deployment, "progress", run_id="run-1", status="running", step_id="mkdb",
           step_status="running")
    body = client.get(f"{API}/{deployment.id}/live", headers=bearer(ex["reader"])).json
    assert body["steps"] == {"db": "ready", "mkdb": "running", "web": "waiting"}
    assert set(body["services"]) == {"db", "web"}

    login("qa-anna")
    page = client.get(f"/deployments/{deployment.id}").text
    graph = json.loads(html.unescape(re.search(r'data-graph="([^"]*)"', page).group(1)))
    assert graph["nodes"] == [{"id": "db", "service": "db-service", "position": {"x": 10, "y": 20}},
                              {"id": "mkdb", "plugin": "postgres-database"},
                              {"id": "web", "service": "web-service"}]
    assert graph["edges"] == [{"from": "db", "to": "mkdb"}, {"from": "mkdb", "to": "web"}]
