"""app/services/provisioning.py: ansible-runner the AWX way, on stand-in playbooks that run on
this machine (connection: local) with what the service writes for a real node: events stored
with an increasing counter and secrets redacted, the failing task named with Ansible's own
message, cancel, timeout, one run per node, and nothing left of the private run directory."""
import glob
import json
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Environment, NodeSshAccess, ProvisioningEvent, ProvisioningRun
from app.services import catalog, nodes, provisioning
from app.services.catalog import keyring
from app.services.errors import Conflict

HERE = Path(__file__).resolve().parent
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "-----END OPENSSH PRIVATE KEY-----\n")
PASSWORD = "ssh-password-never-shown"


@pytest.fixture(autouse=True)
def stand_in_playbooks(monkeypatch):
    pytest.importorskip("ansible_runner")
    monkeypatch.setattr(provisioning, "PLAYBOOK_DIR", HERE / "playbooks")
    monkeypatch.setattr(provisioning, "PLAYBOOKS", {
        "onboard_node": "ok.yml", "decommission_node": "fail.yml", "upgrade_agents": "slow.yml"})


@pytest.fixture
def node(app, admin):
    environment = catalog.create(admin, Environment, "staging")
    node, token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    node.ssh_access = NodeSshAccess(
        host="10.0.0.5", port=22, user="admin", become=True,
        private_key_ciphertext=keyring().encrypt(KEY, provisioning.SSH_PRIVATE_KEY_CONTEXT),
        password_ciphertext=keyring().encrypt(PASSWORD, provisioning.SSH_PASSWORD_CONTEXT))
    db.session.commit()
    node.test_token = token
    return node


def _run(admin, node, playbook, **kwargs):
    run = provisioning.request(admin, node, playbook, secrets={"nullops_agent_token": node.test_token})
    db.session.commit()
    return run.id, provisioning.execute(run.id, **kwargs)


def _stored_text(run_id):
    run = db.session.get(ProvisioningRun, run_id)
    events = db.session.scalars(select(ProvisioningEvent).where(ProvisioningEvent.run_id == run_id)
                                .order_by(ProvisioningEvent.counter)).all()
    return run, events, json.dumps([[e.event, e.task, e.stdout, e.data] for e in events]) + run.message


def _run_dirs(run_id):
    return glob.glob(f"{tempfile.gettempdir()}/nullops-run-{run_id}-*")


def test_a_run_stores_each_event_in_order_with_every_secret_redacted(admin, node):
    run_id, run = _run(admin, node, "onboard_node")
    run, events, text = _stored_text(run_id)
    assert run.status == "successful" and run.rc == 0 and run.failed_task is None, run.message
    assert [e.counter for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == provisioning.RUN_END and events[-1].data["status"] == "successful"
    tasks = [e.task for e in events if e.event == "runner_on_ok"]
    assert tasks == ["Show the token (as a careless role would)", "Echo the token through a command"]
    assert "token is ******** for nullops-agent" in text
    for secret in (node.test_token, PASSWORD, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"):
        assert secret not in text
    assert run.secrets_ciphertext is None  # the token is gone from the database too
    assert _run_dirs(run_id) == []


def test_a_failed_run_names_the_failing_task_with_ansibles_message(admin, node):
    run_id, run = _run(admin, node, "decommission_node")
    run, events, text = _stored_text(run_id)
    assert run.status == "failed" and run.rc != 0
    assert run.failed_task == "Check the free disk space"
    assert run.message == "Check the free disk space: No space left on device (token ********)"
    assert "Never reached" not in text and node.test_token not in text
    assert _run_dirs(run_id) == []


def test_one_run_per_node_at_a_time(admin, node):
    first = provisioning.request(admin, node, "onboard_node")
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        provisioning.request(admin, node, "decommission_node")
    assert "already has a run going on" in caught.value.message
    first.status = "successful"
    db.session.commit()
    assert provisioning.request(admin, node, "upgrade_agents").status == "pending"


def test_a_cancelled_run_ends_as_cancelled(admin, node):
    run = provisioning.request(admin, node, "upgrade_agents")
    db.session.commit()
    provisioning.cancel(admin, run)
    run = provisioning.execute(run.id, cancel_poll_s=0)
    assert run.status == "canceled" and run.message == "canceled by an admin"
    assert _run_dirs(run.id) == []


def test_a_run_that_hangs_ends_at_its_timeout(admin, node):
    run_id, run = _run(admin, node, "upgrade_agents", timeout_s=3)
    assert run.status == "timeout" and "timeout" in run.message
    assert _run_dirs(run_id) == []


def test_the_inventory_holds_connection_details_only_and_values_cannot_add_keys(admin, node):
    import yaml

    run = provisioning.request(admin, node, "onboard_node", secrets={"nullops_agent_token": node.test_token})
    hostile = "admin\n          ansible_connection: local"
    node.ssh_access.user = hostile
    rendered = provisioning.render_inventory(run, node, node.ssh_access)
    host = yaml.safe_load(rendered)["all"]["children"]["nodes"]["hosts"]["node-1"]
    assert host == {
        "ansible_host": "10.0.0.5", "ansible_port": 22, "ansible_user": hostile,
        "ansible_become": True, "nullops_agent_container_name": "nullops-agent",
        "nullops_agent_data_dir": "/var/lib/nullops-agent", "nullops_agent_bind_address": "10.0.0.5",
        "nullops_agent_port": 5000,
    }
    for secret in (node.test_token, PASSWORD, KEY):
        assert secret not in rendered


def test_a_failed_fact_gathering_names_each_failed_modules_own_reason():
    # The shape Ansible 2.19 gives a gathering that fails under become (seen with a user who is
    # no sudoer): the task's message alone does not say why.
    row = ProvisioningEvent(event="runner_on_failed", task="Gathering Facts", stdout="", data=None)
    row.data = provisioning._event_row(1, 1, {"event": "runner_on_failed", "event_data": {
        "task": "Gathering Facts", "res": {
            "msg": "The following modules failed to execute: ansible.legacy.setup.",
            "failed_modules": {"ansible.legacy.setup": {
                "msg": "Incorrect sudo password", "module_stderr": "deployer is not in\nthe sudoers file",
                "ansible_facts": {"big": "not kept"}}}}}}, lambda value: value).data
    assert "ansible_facts" not in json.dumps(row.data)
    assert provisioning._failure_message(row) == (
        "The following modules failed to execute: ansible.legacy.setup. ansible.legacy.setup: "
        "Incorrect sudo password deployer is not in the sudoers file")
