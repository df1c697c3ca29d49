"""The deployments API: shapes, filters, guards, access, and live logs and metrics through a
stand-in for the controller's internal endpoint (the real one relays to agents; its own tests
are in tests/controller)."""
import json
import threading

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from agent import protocol
from app.api.schemas.deployments import DeploymentOut
from app.controller import state
from app.controller.internal import internal_proof, internal_token, server_tls
from app.extensions import db
from app.models import AuditEntry, Deployment, DeploymentEvent, PipelineVersion
from app.services import registries
from app.services.specs import service_urls
from tests.access.deployments import (
    add_deployment,
    add_node,
    pipeline_version,
    push_tags,
    registry,
    service_step,
)
from tests.dockertools import htpasswd_registry

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


@pytest.fixture
def as_(bearer, ex):
    return lambda role: bearer(ex[role])


def counts():
    """Deployment rows, events and audit entries (tokens the test makes are audited too)."""
    return (db.session.scalar(db.select(db.func.count()).select_from(Deployment)),
            db.session.scalar(db.select(db.func.count()).select_from(DeploymentEvent)),
            db.session.scalar(db.select(db.func.count()).select_from(AuditEntry)
                              .where(AuditEntry.action.startswith("deployment."))))


def test_create_answers_the_deployment_with_urls_and_countdown(client, ex, version, node, as_):
    response = client.post(API, headers=as_("writer"), json={
        "project_id": ex["project"].id, "environment_id": ex["environment"].id,
        "name": "feature-1", "tags": {}})
    assert response.status_code == 201, response.text
    body = response.json
    assert body["project"] == {"id": ex["project"].id, "name": "shop"}
    assert body["environment"] == {"id": ex["environment"].id, "name": "staging"}
    assert body["node"] == {"id": node.id, "name": "node-1"}
    assert body["created_by"] == {"id": ex["writer"].id, "username": "se-bob"}
    assert (body["status"], body["pipeline_version"]) == ("pending", 1)
    assert body["tags"] == {"web": "1.4", "db": "15"}
    assert body["urls"] == {"web": "http://web.feature-1.staging.localhost"}
    assert body["remaining_seconds"] == pytest.approx(ex["environment"].cleanup_minutes * 60, abs=5)
    assert body["expires_at"] and body["cloned_from_id"] is None and body["deleted_at"] is None


@pytest.mark.parametrize("settings, url", [
    ({"NULLOPS_INGRESS_LISTEN": "127.0.0.1:8081"}, "http://web.pr-2.staging.localhost:8081"),
    ({"NULLOPS_INGRESS_LISTEN": ":8081", "NULLOPS_INGRESS_PUBLIC_PORT": 80}, "http://web.pr-2.staging.localhost"),
    ({"NULLOPS_INGRESS_PUBLIC_SCHEME": "https", "NULLOPS_INGRESS_PUBLIC_PORT": 443},
     "https://web.pr-2.staging.localhost"),
    ({"NULLOPS_INGRESS_PUBLIC_SCHEME": "https", "NULLOPS_INGRESS_PUBLIC_PORT": 8443},
     "https://web.pr-2.staging.localhost:8443"),
])
def test_urls_are_what_people_type_port_and_scheme_included(client, app, ex, version, node, as_,
                                                             monkeypatch, settings, url):
    for name, value in settings.items():
        monkeypatch.setitem(app.config, name, value)
    created = client.post(API, headers=as_("writer"), json={
        "project_id": ex["project"].id, "environment_id": ex["environment"].id, "name": "pr-2"})
    assert created.status_code == 201, created.text
    assert created.json["urls"] == {"web": url}
    assert client.get(API, headers=as_("reader")).json["items"][0]["urls"] == {"web": url}
    deployment = db.session.get(Deployment, created.json["id"])
    # The spec for the agent takes these (what it substitutes for ${services.web.url}).
    assert service_urls(deployment) == {"web": url}


@pytest.mark.parametrize("body,field", [
    ({"name": "d1", "tags": {}, "colour": "red"}, "colour"),
    ({"name": 5, "tags": {}}, "name"),
    ({"name": "d1", "tags": {"web": 1}}, "tags.web"),
    ({"name": "d1", "tags": ["web"]}, "tags"),
    ({"name": "Not A Label", "tags": {}}, "name"),
    ({"name": "d1", "tags": {"web": "2.0"}}, "tags.web"),
    ({"tags": {}}, "name"),
])
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(client, ex, version, node, as_,
                                                                  body, field):
    before = counts()
    body = {"project_id": ex["project"].id, "environment_id": ex["environment"].id, **body}
    response = client.post(API, headers=as_("writer"), json=body)
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"]
    assert counts() == before


def test_an_invisible_project_or_environment_is_not_found(client, ex, version, node, as_):
    for project_id, environment_id in ((ex["other_project"].id, ex["environment"].id),
                                       (ex["project"].id, 999999)):
        response = client.post(API, headers=as_("writer"), json={
            "project_id": project_id, "environment_id": environment_id, "name": "d1"})
        assert response.status_code == 404, response.text


def test_no_room_is_a_conflict_with_the_free_figures(client, ex, version, node, as_):
    ex["project"].memory_mb = 16384
    db.session.commit()
    response = client.post(API, headers=as_("writer"), json={
        "project_id": ex["project"].id, "environment_id": ex["environment"].id, "name": "d1"})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "insufficient_resources"
    assert response.json["error"]["message"] == ("no online node in staging has 1 CPU and 16384 MB "
                                                 "free: node-1 has 4 CPUs and 8192 MB free")


def test_the_list_filters_and_hides_deleted_ones_unless_asked(client, ex, version, node, as_):
    billing = pipeline_version(ex["other_project"], [service_step("web")])
    add_deployment(version, ex["environment"], node, "ready-one")
    add_deployment(version, ex["environment"], node, "failed-one", status="failed")
    add_deployment(version, ex["environment"], node, "gone", status="deleted")
    add_deployment(billing, ex["environment"], node, "billing-one")

    def names(role="reader", **query):
        response = client.get(API, headers=as_(role), query_string=query)
        assert response.status_code == 200, response.text
        return sorted(item["name"] for item in response.json["items"])

    # The reader sees billing's deployment too: it runs in the environment QA may view.
    assert names() == ["billing-one", "failed-one", "ready-one"]
    assert names(project_id=ex["project"].id) == ["failed-one", "ready-one"]
    assert names(status="failed") == ["failed-one"]
    assert names(include_deleted="true", project_id=ex["project"].id) == ["failed-one", "gone", "ready-one"]
    assert names(environment_id=ex["environment"].id, per_page=1) in (["ready-one"], ["failed-one"],
                                                                      ["billing-one"])
    assert names("outsider") == []
    # The total counts every visible row, on a full page, a short one and one past the end.
    for page, shown in ((1, 2), (2, 1), (3, 0)):
        body = client.get(API, headers=as_("reader"), query_string={"per_page": 2, "page": page}).json
        assert (len(body["items"]), body["total"]) == (shown, 3)
    bad = client.get(API, headers=as_("reader"), query_string={"status": "sleeping"})
    assert bad.status_code == 422 and "status" in bad.json["error"]["fields"]


def test_asking_for_the_deleted_status_lists_the_deleted_ones(client, ex, version, node, as_):
    # status=deleted answered nothing unless include_deleted=true came with it: the list's
    # live-only condition ruled out the very rows the filter asked for.
    add_deployment(version, ex["environment"], node, "ready-one")
    add_deployment(version, ex["environment"], node, "gone", status="deleted")

    def listed(**query):
        response = client.get(API, headers=as_("reader"), query_string=query)
        assert response.status_code == 200, response.text
        return [item["name"] for item in response.json["items"]], response.json["total"]

    assert listed(status="deleted") == (["gone"], 1)
    assert listed(status="deleted", include_deleted="true") == (["gone"], 1)
    assert listed() == (["ready-one"], 1)   # without asking, deleted ones stay out


def test_lists_and_details_are_exactly_what_the_schema_dumps(client, ex, version, node, as_):
    # Rows are shaped without validation on the hot path: every optional part, set and unset,
    # must come out as DeploymentOut would write it (datetimes in the same ISO form, floats...).
    source = add_deployment(version, ex["environment"], node, "ready-one", progress={"web": "ready"})
    add_deployment(version, ex["environment"], None, "unplaced", status="pending",
                   created_by_id=ex["writer"].id, cloned_from_id=source.id)
    add_deployment(version, ex["environment"], node, "gone", status="deleted")
    items = client.get(API, headers=as_("reader"), query_string={"include_deleted": "true"}).json["items"]
    details = [client.get(f"{API}/{item['id']}", headers=as_("reader")).json for item in items]
    assert len(items) == 3 and details == items
    for item in items:
        assert DeploymentOut.model_validate(item).model_dump(mode="json") == item
    assert {item["name"]: bool(item["urls"]) for item in items} == {
        "ready-one": True, "unplaced": True, "gone": False}


def test_a_version_id_given_again_gets_its_own_urls(client, ex, version, node, as_):
    # Versions' exposed ports are read once per process; SQLite gives a deleted row's id to the
    # next row, so a version that replaces a deleted one must not inherit its ports.
    first = add_deployment(version, ex["environment"], node, "first")
    assert client.get(f"{API}/{first.id}", headers=as_("reader")).json["urls"] == {
        "web": "http://web.first.staging.localhost"}
    version_id = version.id
    db.session.delete(first)
    db.session.delete(version)
    db.session.commit()
    again = PipelineVersion(id=version_id, project_id=ex["project"].id, number=1, definition={},
                            resolved={"steps": [service_step("api", exposed=[9000])]})
    db.session.add(again)
    db.session.commit()
    second = add_deployment(again, ex["environment"], node, "second")
    assert client.get(f"{API}/{second.id}", headers=as_("reader")).json["urls"] == {
        "api": "http://api.second.staging.localhost"}


def test_a_deleted_deployment_shows_no_urls_and_no_countdown(client, ex, version, node, as_):
    gone = add_deployment(version, ex["environment"], node, "gone", status="deleted")
    body = client.get(f"{API}/{gone.id}", headers=as_("reader")).json
    assert (body["urls"], body["remaining_seconds"], body["expires_at"]) == ({}, None, None)


def test_delete_is_accepted_and_idempotent(client, ex, version, node, as_):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="deploying")
    for _ in range(2):
        response = client.delete(f"{API}/{deployment.id}", headers=as_("writer"))
        assert response.status_code == 202 and response.json["status"] == "deleting"
    kinds = [e.kind for e in db.session.scalars(db.select(DeploymentEvent))]
    assert kinds == ["delete_requested"]


def test_retry_of_a_deployment_that_did_not_fail_is_a_conflict_naming_its_status(client, ex, version,
                                                                                  node, as_):
    ready = add_deployment(version, ex["environment"], node, "d1")
    response = client.post(f"{API}/{ready.id}/retry", headers=as_("writer"))
    assert response.status_code == 409
    assert response.json["error"]["message"] == "only a failed deployment can be retried; d1 is ready"
    failed = add_deployment(version, ex["environment"], node, "d2", status="failed")
    response = client.post(f"{API}/{failed.id}/retry", headers=as_("writer"))
    assert response.status_code == 202 and response.json["status"] == "pending"


def test_clone_and_extend(client, ex, version, node, as_):
    source = add_deployment(version, ex["environment"], node, "d1", idle_minutes=60)
    response = client.post(f"{API}/{source.id}/clone", headers=as_("writer"), json={"name": "d1-copy"})
    assert response.status_code == 201, response.text
    assert (response.json["cloned_from_id"], response.json["name"]) == (source.id, "d1-copy")
    taken = client.post(f"{API}/{source.id}/clone", headers=as_("writer"), json={"name": "d1"})
    assert taken.status_code == 409 and taken.json["error"]["fields"] == {"name": "already taken in staging"}
    before = client.get(f"{API}/{source.id}", headers=as_("reader")).json["remaining_seconds"]
    extended = client.post(f"{API}/{source.id}/extend", headers=as_("writer"))
    assert extended.status_code == 200
    assert extended.json["remaining_seconds"] == pytest.approx(before + 3600, abs=5)


def test_the_history_is_oldest_first_and_names_who(client, ex, version, node, as_):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="failed")
    client.post(f"{API}/{deployment.id}/extend", headers=as_("writer"))
    client.post(f"{API}/{deployment.id}/retry", headers=as_("admin"))
    client.delete(f"{API}/{deployment.id}", headers=as_("writer"))
    response = client.get(f"{API}/{deployment.id}/events", headers=as_("reader"))
    assert response.status_code == 200
    items = response.json["items"]
    assert [(i["kind"], i["actor"]["username"]) for i in items] == [
        ("extended", "se-bob"), ("retried", "admin"), ("delete_requested", "se-bob")]
    assert response.json["total"] == 3


def test_deploy_options_list_the_latest_version_s_service_steps(client, ex, node, as_):
    empty = client.get(f"/api/v1/projects/{ex['project'].id}/deploy-options", headers=as_("reader"))
    assert empty.json == {"pipeline_version": None, "steps": []}
    pipeline_version(ex["project"], [service_step("db", tag="15"),
                                     service_step("web", mode="selectable", pattern="features-*")])
    response = client.get(f"/api/v1/projects/{ex['project'].id}/deploy-options", headers=as_("reader"))
    assert response.json == {"pipeline_version": 1, "steps": [
        {"step_id": "db", "service": "db-service", "tag_mode": "pinned", "tag": "15", "tag_pattern": None},
        {"step_id": "web", "service": "web-service", "tag_mode": "selectable", "tag": None,
         "tag_pattern": "features-*"}]}


def test_a_selectable_step_s_tags_from_a_real_registry(client, ex, node, as_, tmp_path):
    registries.clear_cache()
    with htpasswd_registry(tmp_path, "puller", "registry-PW-1") as address:
        push_tags(address, "puller", "registry-PW-1", "team/web", ["features-a", "features-b", "v1"])
        local = registry("local", f"http://{address}", "puller", "registry-PW-1")
        pipeline_version(ex["project"], [
            service_step("web", mode="selectable", pattern="features-*", registry_id=local.id),
            service_step("db", tag="15")])
        url = f"/api/v1/projects/{ex['project'].id}/steps/web/tags"
        response = client.get(url, headers=as_("writer"))
        assert response.status_code == 200, response.text
        assert response.json == {"step_id": "web", "pattern": "features-*",
                                 "tags": ["features-a", "features-b"]}
        assert client.get(url, headers=as_("reader")).status_code == 403
        assert client.get(url, headers=as_("outsider")).status_code == 404
        pinned = client.get(f"/api/v1/projects/{ex['project'].id}/steps/db/tags", headers=as_("writer"))
        assert pinned.status_code == 422 and pinned.json["error"]["fields"] == {"step_id": "pinned to 15"}
        missing = client.get(f"/api/v1/projects/{ex['project'].id}/steps/cache/tags", headers=as_("writer"))
        assert missing.status_code == 404
        created = client.post(API, headers=as_("writer"), json={
            "project_id": ex["project"].id, "environment_id": ex["environment"].id, "name": "d1",
            "tags": {"web": "features-b"}})
        assert created.status_code == 201 and created.json["tags"] == {"web": "features-b", "db": "15"}
    registries.clear_cache()


def test_each_change_is_refused_to_a_read_only_member_who_still_sees_everything(client, ex, version,
                                                                                  node, as_):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="failed")
    changes = [("DELETE", f"{API}/{deployment.id}", None), ("POST", f"{API}/{deployment.id}/retry", None),
               ("POST", f"{API}/{deployment.id}/extend", None),
               ("POST", f"{API}/{deployment.id}/clone", {"name": "d2"}),
               ("POST", API, {"project_id": ex["project"].id, "environment_id": ex["environment"].id,
                              "name": "d3"})]
    before = counts()
    for method, path, body in changes:
        assert client.open(path, method=method, json=body, headers=as_("reader")).status_code == 403
        assert client.open(path, method=method, json=body, headers=as_("outsider")).status_code == 404
    assert counts() == before and deployment.status == "failed"
    for path in (f"{API}/{deployment.id}", f"{API}/{deployment.id}/events"):
        assert client.get(path, headers=as_("reader")).status_code == 200
        assert client.get(path, headers=as_("outsider")).status_code == 404


# --- live logs and metrics ----------------------------------------------------------------------
class FakeController:
    """The controller's internal endpoint as the web tier sees it (TLS with the certificate it
    publishes, the challenge and the proof), then answers to logs.tail and stats.get; node
    `offline_node` answers as a node without a link."""

    def __init__(self, secret, offline_node=None):
        self.token, self.offline_node = internal_token(secret), offline_node
        self.agent_ids = ("dep-1", "dep-2")  # deployments the node's containers belong to
        self.requests = []
        ctx, self.thumbprint = server_tls("localhost")
        self.server = serve(self._handle, "127.0.0.1", 0, compression=None, ssl=ctx)
        self.address = f"127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, ws):
        nonce = "ab" * 32
        ws.send(json.dumps({"type": "challenge", "nonce": nonce}))
        if json.loads(ws.recv()).get("proof") != internal_proof(self.token, nonce):
            return
        ws.send(json.dumps({"type": "ready"}))
        try:
            for raw in ws:
                request = json.loads(raw)
                self.requests.append(request)
                ws.send(json.dumps({"type": "response", "id": request["id"], **self._answer(request)}))
        except ConnectionClosed:
            pass

    def _answer(self, request):
        if request["node_id"] == self.offline_node:
            return {"ok": False, "error": {"code": "node_offline", "message": "link lost 3 s ago"}}
        if request["method"] == protocol.LOGS_TAIL:
            params = request["params"]
            return {"ok": True, "result": {"lines": [f"{params['step_id']} line {n}"
                                                     for n in range(params["tail"])]}}
        sample = {"name": "c", "role": "service", "cpu_percent": 1.5, "memory_usage": 1024,
                  "memory_limit": 4096, "id": "x"}
        return {"ok": True, "result": {"host": {}, "engine": {}, "containers": [
            {**sample, "deployment_id": self.agent_ids[0], "step_id": "web"},
            {**sample, "deployment_id": self.agent_ids[1], "step_id": "web"},
            {**sample, "deployment_id": self.agent_ids[0], "step_id": "db"}]}}

    def close(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def controller(app, monkeypatch):
    fake = FakeController(app.config["SECRET_KEY"], offline_node=None)
    state.publish_endpoint(fake.address, fake.thumbprint)  # as the active controller does
    try:
        yield fake
    finally:
        fake.close()


def test_logs_come_from_the_deployment_s_node_for_a_read_only_member(client, ex, version, node, as_,
                                                                     controller):
    deployment = add_deployment(version, ex["environment"], node, "d1")
    response = client.get(f"{API}/{deployment.id}/logs", headers=as_("reader"),
                          query_string={"step": "web", "tail": 3})
    assert response.status_code == 200, response.text
    assert response.json == {"step": "web", "lines": ["web line 0", "web line 1", "web line 2"]}
    [request] = controller.requests
    assert (request["node_id"], request["method"], request["params"]) == (
        node.id, protocol.LOGS_TAIL, {"deployment_id": deployment.agent_id, "step_id": "web", "tail": 3})
    for query, field in (({"step": "cache"}, "step"), ({"step": "web", "tail": 0}, "tail"),
                         ({"tail": 5}, "step")):
        bad = client.get(f"{API}/{deployment.id}/logs", headers=as_("reader"), query_string=query)
        assert bad.status_code == 422 and field in bad.json["error"]["fields"]
    assert len(controller.requests) == 1


def test_metrics_are_the_node_s_samples_of_this_deployment_only(client, ex, version, node, as_, controller):
    deployment = add_deployment(version, ex["environment"], node, "d1")
    controller.agent_ids = (deployment.agent_id, f"dep-{deployment.id + 1}")
    response = client.get(f"{API}/{deployment.id}/metrics", headers=as_("reader"))
    assert response.status_code == 200, response.text
    assert [c["step_id"] for c in response.json["containers"]] == ["web", "db"]
    assert set(response.json["containers"][0]) == {"step_id", "role", "name", "cpu_percent",
                                                   "memory_usage", "memory_limit"}


def test_live_data_is_503_when_the_node_or_the_controller_is_away(client, app, ex, version, node, as_,
                                                                  controller, monkeypatch):
    deployment = add_deployment(version, ex["environment"], node, "d1")
    logs = f"{API}/{deployment.id}/logs?step=web"
    controller.offline_node = node.id
    response = client.get(logs, headers=as_("reader"))
    assert response.status_code == 503
    assert response.json["error"]["message"] == "the node is offline: link lost 3 s ago"
    node.status = "offline"
    db.session.commit()
    response = client.get(f"{API}/{deployment.id}/metrics", headers=as_("reader"))
    assert response.status_code == 503
    assert response.json["error"]["message"] == (
        "node node-1 is offline: live data comes back when it reconnects")
    node.status = "online"
    db.session.commit()
    state.publish_endpoint("127.0.0.1:1", controller.thumbprint)  # nothing listens there
    response = client.get(logs, headers=as_("reader"))
    assert response.status_code == 503
    assert "the controller is not reachable" in response.json["error"]["message"]
    state.publish_endpoint(controller.address, "0" * 64)  # another certificate than published
    response = client.get(logs, headers=as_("reader"))
    assert response.status_code == 503
    assert "another certificate than the active controller published" in response.json["error"]["message"]
    gone = add_deployment(version, ex["environment"], node, "gone", status="deleted")
    assert client.get(f"{API}/{gone.id}/logs?step=web", headers=as_("reader")).status_code == 409
