"""Onboarding over SSH through the API (issue 16.3), with stand-in playbooks for the runs (they
run on this machine; tests/provisioning/playbooks): the node is "provisioning" until its run
ends, then pending (the controller dials it and pins the thumbprint) or "provision_failed" with
the failing task and Ansible's message in the API; retrying is one call; decommission deletes
the node after its run and keeps the run's history; upgrade_agents makes a run per node."""
from pathlib import Path

import pytest

from agent.protocol import verifier_for
from app.extensions import db
from app.models import Node, ProvisioningRun
from app.services import nodes, onboarding, provisioning

HERE = Path(__file__).resolve().parent
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMw\n"
       "-----END OPENSSH PRIVATE KEY-----\n")


@pytest.fixture
def playbooks(monkeypatch):
    pytest.importorskip("ansible_runner")
    monkeypatch.setattr(provisioning, "PLAYBOOK_DIR", HERE / "playbooks")
    chosen = {"onboard_node": "ok.yml", "upgrade_agents": "ok.yml", "decommission_node": "ok.yml"}
    monkeypatch.setattr(provisioning, "PLAYBOOKS", chosen)
    return chosen


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


@pytest.fixture
def env_id(client, headers):
    response = client.post("/api/v1/environments", headers=headers, json={"name": "staging"})
    assert response.status_code == 201, response.text
    return response.json["id"]


def _provision(client, headers, env_id, name="node-1"):
    response = client.post(f"/api/v1/environments/{env_id}/nodes/provision", headers=headers, json={
        "name": name, "host": "10.0.0.5", "ssh": {"host": "10.0.0.5", "user": "admin", "private_key": KEY}})
    assert response.status_code == 201, response.text
    return response.json


def test_a_failed_onboarding_names_the_task_and_is_retried_in_one_call(client, headers, env_id, playbooks):
    added = _provision(client, headers, env_id)
    assert added["status"] == "provisioning" and added["run"]["status"] == "pending"
    assert "token" not in added and KEY not in str(added)
    run = db.session.get(ProvisioningRun, added["run"]["id"])
    assert run.secrets_ciphertext and KEY.splitlines()[1] not in run.secrets_ciphertext

    playbooks["onboard_node"] = "fail.yml"
    assert onboarding.work_once().status == "failed"
    node = client.get(f"/api/v1/nodes/{added['id']}", headers=headers).json
    assert node["status"] == "provision_failed"
    assert node["status_reason"] == (
        "provisioning failed at task 'Check the free disk space': Check the free disk space: No space left "
        "on device (token ********)")
    shown = client.get(f"/api/v1/provisioning-runs/{added['run']['id']}", headers=headers).json
    assert shown["run"]["failed_task"] == "Check the free disk space"
    started = [e["task"] for e in shown["events"] if e["event"] == "playbook_on_task_start"]
    assert started == ["Install the engine", "Check the free disk space"]
    after = shown["events"][-2]["counter"]
    later = client.get(f"/api/v1/provisioning-runs/{added['run']['id']}?after={after}", headers=headers).json
    assert [e["event"] for e in later["events"]] == [provisioning.RUN_END]

    playbooks["onboard_node"] = "ok.yml"
    retried = client.post(f"/api/v1/nodes/{added['id']}/provision/retry", headers=headers)
    assert retried.status_code == 201 and retried.json["status"] == "pending"
    again = client.post(f"/api/v1/nodes/{added['id']}/provision/retry", headers=headers)
    assert again.status_code == 409  # provisioning now, a run going on
    assert onboarding.work_once().status == "successful"
    node = db.session.get(Node, added["id"])
    assert node.status == "pending" and "onboarded over SSH" in node.status_reason
    runs = client.get(f"/api/v1/nodes/{added['id']}/provisioning-runs", headers=headers).json
    assert [r["status"] for r in runs["items"]] == ["successful", "failed"]


def test_the_run_gets_the_token_whose_verifier_the_node_holds(app, admin, env_id, playbooks, monkeypatch):
    seen = {}
    execute = provisioning.execute

    def spy(run_id, **kwargs):
        import json

        run = db.session.get(ProvisioningRun, run_id)
        seen.update(json.loads(provisioning.keyring().decrypt(run.secrets_ciphertext,
                                                              provisioning.SECRETS_CONTEXT)))
        return execute(run_id, **kwargs)

    monkeypatch.setattr(provisioning, "execute", spy)
    from app.models import Environment

    environment = db.session.get(Environment, env_id)
    node, _run = onboarding.add_over_ssh(admin, environment, "node-1", "10.0.0.5", 5000,
                                         {"host": "10.0.0.5", "user": "admin", "password": "pw-123456"})
    onboarding.work_once()
    assert nodes.reveal_verifier(node) == verifier_for(seen["nullops_agent_token"])


def test_decommission_deletes_the_node_after_its_run_and_keeps_the_history(client, headers, env_id,
                                                                          playbooks):
    added = _provision(client, headers, env_id)
    onboarding.work_once()
    run = client.post(f"/api/v1/nodes/{added['id']}/decommission", headers=headers)
    assert run.status_code == 201, run.text
    assert onboarding.work_once().status == "successful"
    assert client.get(f"/api/v1/nodes/{added['id']}", headers=headers).status_code == 404
    kept = client.get(f"/api/v1/provisioning-runs/{run.json['id']}", headers=headers).json
    assert kept["run"]["node_id"] is None and kept["run"]["node_name"] == "node-1"


def test_upgrade_agents_runs_each_onboarded_node_and_skips_the_others(client, headers, env_id, playbooks):
    first = _provision(client, headers, env_id, "node-1")
    onboarding.work_once()
    _provision(client, headers, env_id, "node-2")   # still provisioning
    answer = client.post(f"/api/v1/environments/{env_id}/upgrade-agents", headers=headers)
    assert answer.status_code == 201, answer.text
    assert [(r["node_name"], r["playbook"]) for r in answer.json["runs"]] == [("node-1", "upgrade_agents")]
    assert answer.json["skipped"] == [{"node": "node-2", "reason": "provisioning: not onboarded"}]
    assert first["id"] == answer.json["runs"][0]["node_id"]


@pytest.mark.parametrize("ssh,field", [
    ({"host": "10.0.0.5", "user": "admin"}, "ssh.private_key"),
    ({"host": "10.0.0.5", "user": "admin", "private_key": KEY, "password": "x"}, "ssh.private_key"),
    ({"host": "10.0.0.5", "user": "ad min", "password": "x"}, "ssh.user"),
    ({"host": "http://10.0.0.5", "user": "admin", "password": "x"}, "ssh.host"),
    ({"host": "10.0.0.5", "user": "admin", "private_key": "not a key"}, "ssh.private_key"),
])
def test_bad_ssh_access_is_refused_and_adds_no_node(client, headers, env_id, ssh, field):
    response = client.post(f"/api/v1/environments/{env_id}/nodes/provision", headers=headers,
                           json={"name": "node-1", "host": "10.0.0.5", "ssh": ssh})
    assert response.status_code == 422, response.text
    assert field in response.json["error"]["fields"]
    assert db.session.scalar(db.select(db.func.count()).select_from(Node)) == 0


def test_the_node_page_shows_the_failed_task_and_retries_in_one_click(app, client, login, admin, headers,
                                                                     env_id, playbooks):
    from tests.conftest import csrf_from

    added = _provision(client, headers, env_id)
    playbooks["onboard_node"] = "fail.yml"
    onboarding.work_once()
    login("admin")
    page = client.get(f"/nodes/{added['id']}")
    assert "Provisioning failed." in page.text and "provision failed" in page.text
    assert "Check the free disk space: <strong>failed</strong>" in page.text
    assert "No space left on device (token ********)" in page.text
    retried = client.post(f"/nodes/{added['id']}/provision/retry", data={"csrf_token": csrf_from(page.text)})
    assert retried.status_code == 302
    assert db.session.get(Node, added["id"]).status == "provisioning"
    page = client.get(f"/nodes/{added['id']}")
    assert page.text.count('data-testid="provisioning-run"') == 2 and "Cancel" in page.text
    # While the run goes on the section polls itself; once it ended it stops.
    assert 'hx-trigger="every 2s"' in page.text
    playbooks["onboard_node"] = "ok.yml"
    onboarding.work_once()
    fragment = client.get(f"/nodes/{added['id']}/provisioning")
    assert fragment.status_code == 200 and 'id="node-provisioning"' in fragment.text
    assert 'hx-trigger' not in fragment.text and "Run the agent" not in fragment.text
    assert "Echo the token through a command: <strong>ok</strong>" in fragment.text


def test_an_admin_adds_a_node_over_ssh_and_upgrades_agents_from_the_environment_page(
        client, login, admin, env_id, playbooks):
    from tests.conftest import csrf_from

    login("admin")
    page = client.get(f"/environments/{env_id}")
    assert 'data-testid="add-node-over-ssh"' in page.text and "Upgrade agents" in page.text
    response = client.post(f"/environments/{env_id}/nodes/provision", data={
        "csrf_token": csrf_from(page.text), "name": "node-1", "host": "10.0.0.5", "port": "5000",
        "ssh_port": "22", "ssh_user": "admin", "private_key": KEY, "become": "y"})
    assert response.status_code == 302, response.text
    node = db.session.scalar(db.select(Node))
    assert response.headers["Location"] == f"/nodes/{node.id}"
    assert node.status == "provisioning" and node.ssh_access.host == "10.0.0.5" and node.ssh_access.become
    assert KEY.splitlines()[1] not in client.get(f"/nodes/{node.id}").text
    onboarding.work_once()
    page = client.get(f"/environments/{env_id}")
    token = csrf_from(page.text)
    response = client.post(f"/environments/{env_id}/upgrade-agents", data={"csrf_token": token})
    assert response.status_code == 302
    runs = db.session.scalars(db.select(ProvisioningRun).order_by(ProvisioningRun.id))
    assert [r.playbook for r in runs] == ["onboard_node", "upgrade_agents"]
