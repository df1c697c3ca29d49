"""Environments and nodes through /api/v1: settings, the token shown once, who sees what, and
bad input refused with the field named."""
import pytest
from sqlalchemy import select

from agent.protocol import verifier_for
from app.extensions import db
from app.models import AuditEntry, Environment, Node, NodeCommand, Project
from app.services import catalog, nodes
from app.services.catalog import keyring
from app.services.errors import ValidationFailed
from app.states import NODE_TRANSITIONS
from tests.access.deployments import add_deployment, pipeline_version, service_step

NODE_FIELDS = {
    "id", "environment_id", "name", "host", "port", "enabled", "status", "status_reason",
    "status_changed_at", "last_seen_at", "thumbprint", "pending_thumbprint", "agent_version",
    "capacity", "resources", "resources_at", "agent_container_name", "agent_data_dir", "agent_bind_address",
}
MANAGER_FIELDS = {"host", "port", "thumbprint", "pending_thumbprint", "agent_container_name",
                  "agent_data_dir", "agent_bind_address"}


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


@pytest.fixture
def env_id(client, headers):
    response = client.post("/api/v1/environments", headers=headers,
                           json={"name": "staging", "base_domain": "staging.example.com"})
    assert response.status_code == 201, response.text
    return response.json["id"]


@pytest.fixture
def added(client, headers, env_id):
    response = client.post(f"/api/v1/environments/{env_id}/nodes", headers=headers,
                           json={"name": "node-1", "host": "10.0.0.5", "port": 5443})
    assert response.status_code == 201, response.text
    return response.json


def _rows(model):
    return db.session.scalar(select(db.func.count()).select_from(model))


# Environments
def test_environments_carry_base_domain_and_cleanup(client, headers):
    created = client.post("/api/v1/environments", headers=headers, json={
        "name": "staging", "description": "QA", "base_domain": "qa.example.com",
        "cleanup_minutes": 60}).json
    assert created["base_domain"] == "qa.example.com" and created["cleanup_minutes"] == 60
    plain = client.post("/api/v1/environments", json={"name": "dev"}, headers=headers).json
    assert (plain["base_domain"], plain["cleanup_minutes"]) == ("localhost", 10080)
    changed = client.patch(f"/api/v1/environments/{created['id']}", headers=headers,
                           json={"base_domain": "localhost", "cleanup_minutes": 525600})
    assert changed.status_code == 200
    assert (changed.json["base_domain"], changed.json["cleanup_minutes"]) == ("localhost", 525600)
    listed = client.get("/api/v1/environments", headers=headers).json["items"]
    assert {e["name"]: e["base_domain"] for e in listed} == {"dev": "localhost", "staging": "localhost"}
    entries = db.session.scalars(select(AuditEntry).where(AuditEntry.target_type == "environment")
                                 .order_by(AuditEntry.id)).all()
    assert entries[0].details == {"base_domain": "qa.example.com", "cleanup_minutes": 60,
                                  "cpu_overcommit": 16.0}
    assert entries[1].details == {"base_domain": "localhost", "cleanup_minutes": 10080,
                                  "cpu_overcommit": 16.0}
    assert entries[-1].action == "environment.update"
    assert entries[-1].details == {"base_domain": ["qa.example.com", "localhost"],
                                   "cleanup_minutes": [60, 525600]}


def test_an_environment_overcommits_cpus_16_times_unless_an_admin_changes_it(client, headers):
    created = client.post("/api/v1/environments", json={"name": "staging"}, headers=headers).json
    assert created["cpu_overcommit"] == 16.0
    url = f"/api/v1/environments/{created['id']}"
    changed = client.patch(url, json={"cpu_overcommit": 2.5}, headers=headers)
    assert changed.status_code == 200 and changed.json["cpu_overcommit"] == 2.5
    for bad in (0.5, 65, "2", None):
        refused = client.patch(url, json={"cpu_overcommit": bad}, headers=headers)
        if bad is None:  # null leaves it as it is
            assert refused.json["cpu_overcommit"] == 2.5
            continue
        assert refused.status_code == 422 and "cpu_overcommit" in refused.json["error"]["fields"]
    made = client.post("/api/v1/environments", json={"name": "dev", "cpu_overcommit": 1}, headers=headers)
    assert made.status_code == 201 and made.json["cpu_overcommit"] == 1.0


def test_a_node_sets_its_own_ratio_and_reserve_and_null_goes_back_to_the_environment(
        client, headers, added):
    url = f"/api/v1/nodes/{added['id']}"
    patched = client.patch(url, json={"cpu_overcommit": 4, "memory_reserve_mb": 1024}, headers=headers)
    assert patched.status_code == 200, patched.text
    capacity = patched.json["capacity"]
    assert (capacity["cpu_overcommit"], capacity["memory_reserve_mb"]) == (4.0, 1024)
    cleared = client.patch(url, json={"cpu_overcommit": None}, headers=headers).json["capacity"]
    assert (cleared["cpu_overcommit"], cleared["memory_reserve_mb"]) == (None, 1024)
    entries = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "node.update")
                                 .order_by(AuditEntry.id)).all()
    assert [e.details for e in entries] == [{"cpu_overcommit": [None, 4.0], "memory_reserve_mb": [512, 1024]},
                                            {"cpu_overcommit": [4.0, None]}]


def test_projects_answer_without_environment_settings(client, headers):
    project = client.post("/api/v1/projects", json={"name": "shop"}, headers=headers).json
    assert "base_domain" not in project and project["cleanup_minutes"] is None  # the env default


def test_environment_settings_are_checked_by_the_service_too(admin):
    # The UI and the CLI call the service directly, without the API's schema.
    for settings, field in (({"base_domain": "Not A Domain"}, "base_domain"),
                            ({"base_domain": "a" * 201}, "base_domain"),
                            ({"cleanup_minutes": 1}, "cleanup_minutes"),
                            ({"cleanup_minutes": True}, "cleanup_minutes")):
        with pytest.raises(ValidationFailed) as caught:
            catalog.create(admin, Environment, "staging", **settings)
        assert field in caught.value.fields
    with pytest.raises(TypeError):
        catalog.create(admin, Environment, "staging", colour="red")


# Adding a node
def test_adding_a_node_shows_token_and_command_once(client, headers, env_id, added):
    assert added["status"] == "pending" and added["enabled"] is True
    token, command = added["token"], added["command"]
    assert ("docker run -d --name nullops-agent --restart unless-stopped --network host --cap-add NET_ADMIN "
            "-e AGENT_HOST=10.0.0.5 -e AGENT_PORT=5443 ") in command
    assert token not in command and "--env-file /etc/nullops-agent/nullops-agent.env " in command
    assert "shown only once" in added["message"]
    assert set(added) == NODE_FIELDS | {"token", "command", "message"}
    assert added["capacity"] == {"cpus": None, "memory_mb": None, "reported_cpus": None,
                                 "reported_memory_mb": None, "cpus_override": None,
                                 "memory_mb_override": None, "cpu_overcommit": None,
                                 "memory_reserve_mb": 512}
    node = db.session.get(Node, added["id"])
    assert keyring().decrypt(node.verifier_ciphertext, "node.verifier") == verifier_for(token)

    again = client.get(f"/api/v1/nodes/{added['id']}", headers=headers)
    listed = client.get(f"/api/v1/environments/{env_id}/nodes", headers=headers)
    audit = client.get("/api/v1/audit?per_page=100", headers=headers)
    for response in (again, listed, audit):
        assert response.status_code == 200
        assert token not in response.text and verifier_for(token) not in response.text
        assert "verifier" not in response.text
    assert set(again.json) == NODE_FIELDS
    assert listed.json["total"] == 1 and listed.json["items"][0]["name"] == "node-1"


def test_rotation_answers_the_new_token_once_and_says_what_offline_nodes_need(client, headers, added):
    rotated = client.post(f"/api/v1/nodes/{added['id']}/rotate-token", headers=headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json["token"] != added["token"]
    assert rotated.json["token"] not in rotated.json["command"] and "--env-file" in rotated.json["command"]
    assert "receives the new token over its link" in rotated.json["message"]
    assert "needs the new token by hand" in rotated.json["message"]
    node = db.session.get(Node, added["id"])
    assert keyring().decrypt(node.verifier_ciphertext, "node.verifier") == verifier_for(rotated.json["token"])
    command = db.session.scalar(select(NodeCommand).where(NodeCommand.node_id == node.id))
    assert command.kind == "rotate_token"
    payload = keyring().decrypt(command.payload_ciphertext, "node_command.payload")
    assert nodes.read_rotation(payload) == (verifier_for(rotated.json["token"]), verifier_for(added["token"]))


def test_revoke_then_rotate(client, headers, added):
    url = f"/api/v1/nodes/{added['id']}"
    revoked = client.post(f"{url}/revoke-token", headers=headers).json
    assert revoked["status"] == "revoked" and "token" not in revoked
    assert db.session.get(Node, added["id"]).verifier_ciphertext is None
    assert client.post(f"{url}/rotate-token", headers=headers).json["status"] == "pending"


def test_approving_a_thumbprint_through_the_api(client, headers, added):
    node = db.session.get(Node, added["id"])
    node.thumbprint, node.pending_thumbprint, node.status = "a" * 64, "b" * 64, "untrusted"
    db.session.commit()
    url = f"/api/v1/nodes/{added['id']}/approve-thumbprint"
    wrong = client.post(url, json={"thumbprint": "c" * 64}, headers=headers)
    assert wrong.status_code == 409 and wrong.json["error"]["fields"] == {
        "thumbprint": "does not match the pending thumbprint"}
    malformed = client.post(url, json={"thumbprint": "z" * 64}, headers=headers)
    assert malformed.status_code == 422 and "thumbprint" in malformed.json["error"]["fields"]
    approved = client.post(url, json={"thumbprint": "B" * 64}, headers=headers)
    assert approved.status_code == 200, approved.text
    assert (approved.json["thumbprint"], approved.json["pending_thumbprint"]) == ("b" * 64, None)
    assert (approved.json["status"], approved.json["status_reason"]) == ("offline", "approved; reconnecting")
    again = client.post(url, json={"thumbprint": "b" * 64}, headers=headers)
    assert again.status_code == 409 and "no certificate waiting" in again.json["error"]["message"]


def test_a_status_change_the_state_machine_refuses_answers_409(client, headers, added, monkeypatch):
    node = db.session.get(Node, added["id"])
    node.thumbprint, node.pending_thumbprint, node.status = "a" * 64, "b" * 64, "untrusted"
    db.session.commit()
    monkeypatch.setitem(NODE_TRANSITIONS, "untrusted", {"disabled", "revoked"})
    response = client.post(f"/api/v1/nodes/{added['id']}/approve-thumbprint",
                           json={"thumbprint": "b" * 64}, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json["error"]["message"] == (
        "node node-1 cannot go from untrusted to offline; reload the node and try again")
    assert response.json["error"]["fields"] == {"status": "untrusted"}
    db.session.expire_all()
    assert db.session.get(Node, added["id"]).pending_thumbprint == "b" * 64


def test_enable_disable_patch_and_delete(client, headers, added):
    url = f"/api/v1/nodes/{added['id']}"
    disabled = client.post(f"{url}/disable", headers=headers).json
    assert (disabled["enabled"], disabled["status"]) == (False, "disabled")
    enabled = client.post(f"{url}/enable", headers=headers).json
    assert (enabled["enabled"], enabled["status"]) == (True, "pending")
    patched = client.patch(url, json={"cpus_override": 2, "memory_mb_override": 4096}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json["capacity"]["cpus"] == 2.0 and patched.json["capacity"]["memory_mb"] == 4096
    # Leaving a field out keeps it; null clears an override.
    cleared = client.patch(url, json={"cpus_override": None}, headers=headers).json["capacity"]
    assert (cleared["cpus_override"], cleared["memory_mb_override"]) == (None, 4096)
    moved = client.patch(url, json={"host": "Node-1.Internal", "port": 6000}, headers=headers).json
    assert (moved["host"], moved["port"]) == ("node-1.internal", 6000)
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404


def test_a_node_with_deployments_left_is_deleted_only_with_force(client, headers, added, admin):
    url = f"/api/v1/nodes/{added['id']}"
    node = db.session.get(Node, added["id"])
    project = catalog.create(admin, Project, "shop")
    deployment = add_deployment(pipeline_version(project, [service_step("web")]), node.environment,
                                node, "pr-1")
    refused = client.delete(url, headers=headers)
    assert refused.status_code == 409
    assert refused.json["error"]["fields"] == {"deployments": "1 left on the node"}
    assert "still holds 1 deployment (pr-1)" in refused.json["error"]["message"]
    assert client.get(url, headers=headers).status_code == 200
    bad = client.delete(f"{url}?force=maybe", headers=headers)
    assert bad.status_code == 422 and "force" in bad.json["error"]["fields"]
    assert client.delete(f"{url}?force=true", headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404
    db.session.refresh(deployment)
    assert deployment.status == "deleted"


# Who sees what
def test_members_see_status_and_capacity_but_not_connection_details(client, spec_example, bearer):
    ex = spec_example
    node, _token, _command = nodes.add(ex["admin"], ex["environment"], "node-1", "10.0.0.5")
    node.reported_cpus, node.reported_memory_mb, node.thumbprint = 4.0, 8192, "a" * 64
    db.session.commit()
    for role in ("reader", "writer"):
        seen = client.get(f"/api/v1/nodes/{node.id}", headers=bearer(ex[role])).json
        assert set(seen) == NODE_FIELDS - MANAGER_FIELDS
        assert seen["capacity"]["cpus"] == 4.0 and seen["status"] == "pending"
        listed = client.get(f"/api/v1/environments/{ex['environment'].id}/nodes",
                            headers=bearer(ex[role])).json["items"]
        assert [set(n) for n in listed] == [NODE_FIELDS - MANAGER_FIELDS]
        assert "10.0.0.5" not in str(listed)
    admin_view = client.get(f"/api/v1/nodes/{node.id}", headers=bearer(ex["admin"])).json
    assert set(admin_view) == NODE_FIELDS and admin_view["host"] == "10.0.0.5"


def test_hidden_nodes_answer_exactly_like_missing_ones(client, spec_example, bearer):
    ex = spec_example
    node, _token, _command = nodes.add(ex["admin"], ex["environment"], "node-1", "10.0.0.5")
    headers = bearer(ex["outsider"])
    hidden = client.get(f"/api/v1/nodes/{node.id}", headers=headers)
    missing = client.get("/api/v1/nodes/999999", headers=headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json["error"]["message"].replace(str(node.id), "N") == \
        missing.json["error"]["message"].replace("999999", "N")
    refused = client.post(f"/api/v1/nodes/{node.id}/revoke-token", headers=headers)
    assert refused.status_code == 404
    assert db.session.get(Node, node.id).verifier_ciphertext is not None


# Bad input
BAD_NODES = [
    ({"name": "node-2", "host": "http://x"}, 422, "host", "scheme"),
    ({"name": "node-2", "host": "x/agent"}, 422, "host", "path"),
    ({"name": "node-2", "host": "x:5000"}, 422, "host", "port field"),
    ({"name": "node-2", "host": ""}, 422, "host", None),
    ({"name": "node-2", "host": "x" * 256}, 422, "host", None),
    ({"name": "node-2", "host": "10.0.0.7", "port": 0}, 422, "port", None),
    ({"name": "node-2", "host": "10.0.0.7", "port": 65536}, 422, "port", None),
    ({"name": "node-2", "host": "10.0.0.7", "port": "5000"}, 422, "port", None),
    ({"name": "Node 2", "host": "10.0.0.7"}, 422, "name", None),
    ({"host": "10.0.0.7"}, 422, "name", None),
    ({"name": "node-2", "host": "10.0.0.7", "token": "mine"}, 422, "token", "unknown field"),
    ({"name": "node-1", "host": "10.0.0.7"}, 409, "name", "has a node named 'node-1'"),
]


@pytest.mark.parametrize("body,status,field,words", BAD_NODES,
                         ids=[f"{b.get('name')} {b.get('host', '')[:12]} {b.get('port', '')}"
                              for b, *_ in BAD_NODES])
def test_bad_nodes_are_refused_with_the_field(client, headers, env_id, added, body, status, field,
                                              words):
    before = (_rows(Node), _rows(AuditEntry))
    response = client.post(f"/api/v1/environments/{env_id}/nodes", json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json["error"]
    assert field in error["fields"] and "Traceback" not in response.text
    if words:
        assert words in error["message"] or words in error["fields"][field]
    assert (_rows(Node), _rows(AuditEntry)) == before


BAD_PATCHES = [
    ({"host": None}, "host"), ({"port": None}, "port"), ({"port": 0}, "port"),
    ({"host": "wss://node"}, "host"), ({"cpus_override": 0}, "cpus_override"),
    ({"cpus_override": 1025}, "cpus_override"), ({"memory_mb_override": 63}, "memory_mb_override"),
    ({"memory_mb_override": 2.5}, "memory_mb_override"), ({"name": "renamed"}, "name"),
    ({"enabled": False}, "enabled"), ({"status": "online"}, "status"),
    ({"cpu_overcommit": 0.9}, "cpu_overcommit"), ({"cpu_overcommit": 65}, "cpu_overcommit"),
    ({"memory_reserve_mb": -1}, "memory_reserve_mb"), ({"memory_reserve_mb": None}, "memory_reserve_mb"),
    ({"memory_reserve_mb": 1.5}, "memory_reserve_mb"),
]


@pytest.mark.parametrize("body,field", BAD_PATCHES, ids=[str(b) for b, _ in BAD_PATCHES])
def test_bad_patches_are_refused_and_change_nothing(client, headers, added, body, field):
    url = f"/api/v1/nodes/{added['id']}"
    before = client.get(url, headers=headers).json
    response = client.patch(url, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"] and field in response.json["error"]["message"]
    assert client.get(url, headers=headers).json == before


def test_node_routes_refuse_unknown_fields_and_bodies_they_do_not_take(client, headers, added):
    url = f"/api/v1/nodes/{added['id']}"
    response = client.post(f"{url}/approve-thumbprint", json={"thumbprint": "a" * 64, "force": True},
                           headers=headers)
    assert response.status_code == 422 and "force" in response.json["error"]["fields"]
    missing = client.post(f"{url}/approve-thumbprint", json={}, headers=headers)
    assert missing.status_code == 422 and missing.json["error"]["fields"] == {
        "thumbprint": "this field is required"}
    assert client.get(f"/api/v1/environments/{added['environment_id']}/nodes?per_page=0",
                      headers=headers).status_code == 422
