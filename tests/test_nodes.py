"""The nodes service: tokens shown once and never stored, rotation, revocation, certificate
approval, enable/disable, overrides, and refusals with clear errors."""
import subprocess

import pytest
from sqlalchemy import select

from agent.protocol import verifier_for
from app import __version__, access
from app.extensions import db
from app.models import AuditEntry, DeploymentEvent, Environment, Node, NodeCommand, Project
from app.models.types import utcnow
from app.services import catalog, nodes
from app.services.catalog import keyring
from app.services.errors import Conflict, ValidationFailed
from app.states import NODE_TRANSITIONS
from tests.access.deployments import add_deployment, pipeline_version, service_step

PINNED = "a" * 64
PRESENTED = "c0ffee" + "b" * 58


@pytest.fixture
def env(app, admin):
    return catalog.create(admin, Environment, "staging", base_domain="staging.example.com")


@pytest.fixture
def added(env, admin):
    """(node, token, command) of a freshly added node."""
    return nodes.add(admin, env, "node-1", "10.0.0.5")


def _database_text():
    """Every row of every table, as text: what a database dump would hold."""
    return "\n".join(
        repr(row) for table in db.metadata.sorted_tables for row in db.session.execute(table.select())
    )


def _audit(action):
    stmt = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
    return db.session.scalars(stmt).all()


def _commands(node, kind=None):
    stmt = select(NodeCommand).where(NodeCommand.node_id == node.id).order_by(NodeCommand.id)
    if kind is not None:
        stmt = stmt.where(NodeCommand.kind == kind)
    return db.session.scalars(stmt).all()


def _make_untrusted(node, pinned=PINNED, presented=PRESENTED):
    node.thumbprint, node.pending_thumbprint, node.status = pinned, presented, "untrusted"
    db.session.commit()


def test_adding_a_node_stores_only_the_encrypted_verifier(added):
    node, token, _command = added
    assert node.status == "pending" and node.enabled and node.port == 5000
    assert len(token) >= 43  # token_urlsafe(32)
    assert keyring().decrypt(node.verifier_ciphertext, "node.verifier") == verifier_for(token)
    assert nodes.reveal_verifier(node) == verifier_for(token)
    dump = _database_text()
    assert token not in dump
    assert verifier_for(token) not in dump


def test_the_command_is_the_spec_docker_run_with_this_version_and_the_token_in_an_env_file(env, admin):
    _node, token, command = nodes.add(admin, env, "node-2", "node-2.internal", port=5443)
    assert token not in command
    store, run = command.splitlines()[1], command.splitlines()[3]
    assert store == ("sudo sh -c 'umask 077 && mkdir -p /etc/nullops-agent && IFS= read -r t && "
                     "printf \"AGENT_TOKEN=%s\\n\" \"$t\" > /etc/nullops-agent/nullops-agent.env'")
    assert run == (
        "docker run -d --name nullops-agent --restart unless-stopped --network host --cap-add NET_ADMIN "
        "-e AGENT_HOST=0.0.0.0 -e AGENT_PORT=5443 --env-file /etc/nullops-agent/nullops-agent.env "
        "-v /var/run/docker.sock:/var/run/docker.sock -v /sys/fs/cgroup:/sys/fs/cgroup "
        "-v /var/lib/nullops-agent:/data -v /run/nullops-agent:/run/nullops-agent "
        f"nullops/agent:{__version__}"
    )


def test_the_command_takes_the_container_name_data_directory_and_bind_address(env, admin):
    node, _token, command = nodes.add(admin, env, "node-2", "10.0.0.7", agent_container_name="agent-b",
                                      agent_data_dir="/srv/agent-b")
    assert node.agent_bind_address == "10.0.0.7"  # the address the node was added with
    assert "--name agent-b " in command and "-e AGENT_HOST=10.0.0.7 -e AGENT_PORT=5000 " in command
    assert "--env-file /etc/nullops-agent/agent-b.env " in command and "-v /srv/agent-b:/data " in command
    v6, _token, command = nodes.add(admin, env, "node-3", "node-3.internal", agent_bind_address="::1")
    assert v6.agent_bind_address == "::1" and "-e AGENT_HOST=::1 " in command


def test_the_command_stores_the_token_from_its_prompt_in_a_file_only_root_reads(tmp_path):
    """The first line, run by sh with the token on stdin: the file holds it, mode 0600."""
    node = Node(port=5000)  # the defaults: no NodeAgentSettings row
    store = nodes.agent_command(node).splitlines()[1].removeprefix("sudo ")
    store = store.replace("/etc/nullops-agent", str(tmp_path / "etc"))
    subprocess.run(store, shell=True, input="tok-en_123\n", text=True, check=True)
    env_file = tmp_path / "etc" / "nullops-agent.env"
    assert env_file.read_text() == "AGENT_TOKEN=tok-en_123\n"
    assert env_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("field,value", [
    ("agent_container_name", "-agent"), ("agent_container_name", "a b"), ("agent_container_name", "a;rm"),
    ("agent_data_dir", "relative"), ("agent_data_dir", "/"), ("agent_data_dir", "/a/../etc"),
    ("agent_data_dir", "/a b"), ("agent_data_dir", "/a'b"), ("agent_bind_address", "node.internal"),
    ("agent_bind_address", "1.2.3.4; rm"),
])
def test_bad_agent_parameters_are_refused(env, admin, field, value):
    with pytest.raises(ValidationFailed) as caught:
        nodes.add(admin, env, "node-1", "10.0.0.5", **{field: value})
    assert field in caught.value.fields


def test_every_token_is_new(env, admin):
    tokens = {nodes.add(admin, env, f"node-{i}", "10.0.0.5")[1] for i in range(5)}
    assert len(tokens) == 5


@pytest.mark.parametrize("host,why", [
    ("http://10.0.0.5", "scheme"), ("wss://node", "scheme"), ("node/agent", "path"),
    ("node:5000", "port field"), ("999.1.1.1", "neither"), ("no de", "neither"),
    ("-node", "neither"), ("", "1-255"), ("a" * 256, "1-255"),
])
def test_bad_hosts_are_refused_with_the_reason(env, admin, host, why):
    with pytest.raises(ValidationFailed) as caught:
        nodes.add(admin, env, "node-1", host)
    assert "host" in caught.value.fields and why in caught.value.message
    assert db.session.scalar(select(db.func.count()).select_from(Node)) == 0


@pytest.mark.parametrize("host,stored", [
    ("Node-1.Example.COM", "node-1.example.com"), ("10.0.0.5", "10.0.0.5"), ("[::1]", "::1"),
    ("fe80:0:0::1", "fe80::1"), ("localhost", "localhost"),
])
def test_hosts_are_stored_normalised(env, admin, host, stored):
    node, _token, _command = nodes.add(admin, env, "node-1", host)
    assert node.host == stored


@pytest.mark.parametrize("port", [0, 65536, -1, True, "5000"])
def test_bad_ports_are_refused(env, admin, port):
    with pytest.raises(ValidationFailed) as caught:
        nodes.add(admin, env, "node-1", "10.0.0.5", port=port)
    assert caught.value.fields == {"port": "use a whole number from 1 to 65535"}


def test_node_names_are_dns_labels_unique_per_environment(env, admin, added):
    with pytest.raises(ValidationFailed) as caught:
        nodes.add(admin, env, "Node_1", "10.0.0.6")
    assert "name" in caught.value.fields
    with pytest.raises(Conflict) as caught:
        nodes.add(admin, env, "node-1", "10.0.0.6")
    assert caught.value.fields == {"name": "already taken"}
    other = catalog.create(admin, Environment, "production")
    twin, _token, _command = nodes.add(admin, other, "node-1", "10.0.0.6")
    assert twin.environment_id == other.id


def test_rotation_replaces_the_verifier_and_queues_it_encrypted(added, admin):
    node, old_token, _command = added
    old_ciphertext = node.verifier_ciphertext
    node.status = "online"
    db.session.commit()
    node, token, command = nodes.rotate_token(admin, node)
    assert token != old_token and token not in command and "--env-file" in command
    assert node.verifier_ciphertext != old_ciphertext
    assert nodes.reveal_verifier(node) == verifier_for(token)
    assert node.status == "online"  # the controller pushes it over the live link
    (queued,) = _commands(node, nodes.ROTATE_TOKEN)
    assert queued.done_at is None
    assert queued.payload_ciphertext.startswith("nlk1:")
    payload = keyring().decrypt(queued.payload_ciphertext, "node_command.payload")
    assert nodes.read_rotation(payload) == (verifier_for(token), verifier_for(old_token))
    dump = _database_text()
    for secret in (token, old_token, verifier_for(token), verifier_for(old_token)):
        assert secret not in dump


def test_revoking_clears_the_verifier_drops_the_link_and_cancels_a_waiting_rotation(added, admin):
    node, _token, _command = added
    nodes.rotate_token(admin, node)
    node = nodes.revoke_token(admin, node)
    assert node.verifier_ciphertext is None and node.status == "revoked"
    assert "issue a new token" in node.status_reason
    (rotation,) = _commands(node, nodes.ROTATE_TOKEN)
    assert rotation.done_at is not None and "revoked" in rotation.result
    (drop,) = _commands(node, nodes.DROP_LINK)
    assert drop.done_at is None and drop.payload_ciphertext is None
    # Revoking again changes nothing and writes nothing.
    entries = len(_audit("node.revoke_token"))
    nodes.revoke_token(admin, node)
    assert len(_audit("node.revoke_token")) == entries == 1
    assert len(_commands(node, nodes.DROP_LINK)) == 1


def test_a_new_token_after_revocation_starts_over(added, admin):
    node, _token, _command = added
    nodes.revoke_token(admin, node)
    node, token, _command = nodes.rotate_token(admin, node)
    assert node.status == "pending" and nodes.reveal_verifier(node) == verifier_for(token)


def test_a_disabled_node_stays_disabled_when_its_revoked_token_is_replaced(added, admin):
    node, _token, _command = added
    nodes.revoke_token(admin, node)
    nodes.set_enabled(admin, node, False)
    assert node.status == "revoked" and not node.enabled  # still refused: revocation wins
    nodes.set_enabled(admin, node, True)
    assert node.status == "revoked" and node.enabled
    nodes.set_enabled(admin, node, False)
    node, _token, _command = nodes.rotate_token(admin, node)
    assert node.status == "disabled"


def test_approving_pins_the_pending_thumbprint_and_reconnects(added, admin):
    node, _token, _command = added
    _make_untrusted(node)
    node = nodes.approve_thumbprint(admin, node, PRESENTED)
    assert (node.thumbprint, node.pending_thumbprint) == (PRESENTED, None)
    assert (node.status, node.status_reason) == ("offline", "approved; reconnecting")
    (reconnect,) = _commands(node, nodes.RECONNECT)
    assert reconnect.done_at is None
    (entry,) = _audit("node.approve_thumbprint")
    assert entry.details == {"old_thumbprint": PINNED, "new_thumbprint": PRESENTED}


def test_thumbprints_are_accepted_in_upper_case_and_with_colons(added, admin):
    node, _token, _command = added
    _make_untrusted(node)
    spaced = ":".join(PRESENTED[i:i + 2] for i in range(0, 64, 2)).upper()
    assert nodes.approve_thumbprint(admin, node, spaced).thumbprint == PRESENTED


def test_a_thumbprint_that_does_not_match_is_refused_and_changes_nothing(added, admin):
    node, _token, _command = added
    _make_untrusted(node)
    with pytest.raises(Conflict) as caught:
        nodes.approve_thumbprint(admin, node, "d" * 64)
    assert "does not match" in caught.value.message
    assert caught.value.fields == {"thumbprint": "does not match the pending thumbprint"}
    db.session.rollback()
    assert (node.thumbprint, node.pending_thumbprint, node.status) == (PINNED, PRESENTED, "untrusted")
    assert _commands(node) == [] and _audit("node.approve_thumbprint") == []


def test_only_an_untrusted_node_can_be_approved(added, admin):
    node, _token, _command = added
    node.pending_thumbprint = PRESENTED  # pending but online: nothing to approve
    node.status = "online"
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        nodes.approve_thumbprint(admin, node, PRESENTED)
    assert "no certificate waiting for approval (status online)" in caught.value.message


@pytest.mark.parametrize("value", ["abc", "g" * 64, "a" * 63, None])
def test_malformed_thumbprints_are_refused(added, admin, value):
    node, _token, _command = added
    _make_untrusted(node)
    with pytest.raises(ValidationFailed) as caught:
        nodes.approve_thumbprint(admin, node, value)
    assert "thumbprint" in caught.value.fields


def test_a_transition_the_state_machine_refuses_is_a_clear_conflict(added, admin, monkeypatch):
    node, _token, _command = added
    _make_untrusted(node)
    monkeypatch.setitem(NODE_TRANSITIONS, "untrusted", {"disabled", "revoked"})
    with pytest.raises(Conflict) as caught:
        nodes.approve_thumbprint(admin, node, PRESENTED)
    assert caught.value.message.startswith("node node-1 cannot go from untrusted to offline")
    assert caught.value.fields == {"status": "untrusted"}


def test_disabling_and_enabling(added, admin):
    node, _token, _command = added
    node.status = "online"
    db.session.commit()
    nodes.set_enabled(admin, node, False)
    assert (node.enabled, node.status) == (False, "disabled")  # nothing on it: no link either
    assert "does not connect" in node.status_reason
    nodes.set_enabled(admin, node, False)  # again: nothing to do
    nodes.set_enabled(admin, node, True)
    assert (node.enabled, node.status) == (True, "pending")
    assert [e.action for e in db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))][-2:] == [
        "node.disable", "node.enable"]


def test_a_disabled_node_drains_linked_until_its_last_deployment_is_deleted(added, admin, env):
    node, _token, _command = added
    node.status = "online"
    project = catalog.create(admin, Project, "shop")
    version = pipeline_version(project, [service_step("web")])
    failed = add_deployment(version, env, node, "pr-1", status="failed")
    ready = add_deployment(version, env, node, "pr-2")
    nodes.set_enabled(admin, node, False)
    # Still linked (the controller links nodes in these statuses): what is there keeps running.
    assert (node.enabled, node.status) == (False, "online") and node.status in nodes.LINKED_STATUSES
    assert "stays linked until the last one" in node.status_reason
    for deployment in (ready, failed):
        nodes.settle_drained(node.id)
        assert node.status == "online"  # a failed one's row and leftovers are the node's too
        deployment.status, deployment.deleted_at = "deleted", utcnow()
    nodes.settle_drained(node.id)
    db.session.commit()  # as the controller does
    assert node.status == "disabled" and "does not connect" in node.status_reason
    nodes.set_enabled(admin, node, True)
    assert node.status == "pending"


def test_the_controller_links_enabled_nodes_and_disabled_ones_still_holding_deployments(added, admin, env):
    from app.controller.state import link_targets

    node, _token, _command = added
    project = catalog.create(admin, Project, "shop")
    deployment = add_deployment(pipeline_version(project, [service_step("web")]), env, node, "pr-1")
    assert node.id in link_targets()
    nodes.set_enabled(admin, node, False)
    assert node.id in link_targets()
    node.status = "pending"   # however it got there: disabled and empty is never dialled
    deployment.status, deployment.deleted_at = "deleted", utcnow()
    db.session.commit()
    assert node.id not in link_targets()


def test_a_node_holding_deployments_is_not_deleted_unless_forced(added, admin, env):
    node, _token, _command = added
    project = catalog.create(admin, Project, "shop")
    version = pipeline_version(project, [service_step("web")])
    ready = add_deployment(version, env, node, "pr-1")
    deleting = add_deployment(version, env, node, "pr-2", status="deleting")
    add_deployment(version, env, node, "pr-0", status="deleted")
    before = len(_audit("node.delete"))
    with pytest.raises(Conflict) as refused:
        nodes.delete(admin, node)
    assert refused.value.message == (
        "node node-1 still holds 2 deployments (pr-1, pr-2): delete them first and wait until they "
        "are gone (disable the node so no new ones arrive); if its host is gone for good, delete "
        "the node with force, which records them as deleted without checking the host")
    assert refused.value.fields == {"deployments": "2 left on the node"}
    db.session.rollback()
    assert db.session.get(Node, node.id) is not None and len(_audit("node.delete")) == before

    nodes.delete(admin, node, force=True)
    assert db.session.get(Node, node.id) is None
    for deployment, was in ((ready, "ready"), (deleting, "deleting")):
        db.session.refresh(deployment)
        assert (deployment.status, deployment.node_id) == ("deleted", None)
        assert deployment.deleted_at is not None
        assert deployment.status_message == ("its node node-1 was removed from NullOps by admin: "
                                             "nothing on the host could be removed or checked")
        event = db.session.scalar(select(DeploymentEvent).where(
            DeploymentEvent.deployment_id == deployment.id, DeploymentEvent.kind == "deleted"))
        assert (event.actor_id, event.data) == (admin.id, {"status": was})
    assert _audit("node.delete")[-1].details == {"environment": "staging",
                                                 "deployments_left": ["pr-1", "pr-2"]}


def test_a_draining_node_given_a_new_token_is_dialled_again(added, admin, env):
    node, _token, _command = added
    project = catalog.create(admin, Project, "shop")
    add_deployment(pipeline_version(project, [service_step("web")]), env, node, "pr-1")
    nodes.set_enabled(admin, node, False)
    nodes.revoke_token(admin, node)
    node, _token, _command = nodes.rotate_token(admin, node)
    assert (node.enabled, node.status) == (False, "pending")


def test_overrides_set_and_clear_and_the_address_change_reconnects(added, admin):
    node, _token, _command = added
    node.reported_cpus, node.reported_memory_mb = 8.0, 16384
    db.session.commit()
    nodes.update(admin, node, cpus_override=4, memory_mb_override=8192)
    assert (node.capacity_cpus, node.capacity_memory_mb) == (4.0, 8192)
    assert _commands(node) == []  # capacity needs no new link
    nodes.update(admin, node, cpus_override=None)
    assert (node.capacity_cpus, node.capacity_memory_mb) == (8.0, 8192)
    nodes.update(admin, node, host="node-1.internal", port=5443)
    assert (node.host, node.port) == ("node-1.internal", 5443)
    assert [c.kind for c in _commands(node)] == [nodes.RECONNECT]
    changes = [e.details for e in _audit("node.update")]
    assert changes == [
        {"cpus_override": [None, 4.0], "memory_mb_override": [None, 8192]},
        {"cpus_override": [4.0, None]},
        {"host": ["10.0.0.5", "node-1.internal"], "port": [5000, 5443]},
    ]


@pytest.mark.parametrize("field,value", [
    ("cpus_override", 0.05), ("cpus_override", 1025), ("cpus_override", "2"),
    ("memory_mb_override", 63), ("memory_mb_override", 16 * 1024 * 1024 + 1),
    ("memory_mb_override", 1.5), ("host", "http://x"), ("port", 0),
])
def test_bad_updates_are_refused_with_the_field(added, admin, field, value):
    node, _token, _command = added
    with pytest.raises(ValidationFailed) as caught:
        nodes.update(admin, node, **{field: value})
    assert field in caught.value.fields


def test_deleting_a_node_removes_its_commands(added, admin):
    node, _token, _command = added
    nodes.rotate_token(admin, node)
    node_id = node.id
    nodes.delete(admin, node)
    assert db.session.get(Node, node_id) is None
    assert db.session.scalar(select(db.func.count()).select_from(NodeCommand)) == 0
    (entry,) = _audit("node.delete")
    assert entry.target_id == node_id and entry.details == {"environment": "staging"}


def test_a_deleted_node_s_ids_and_its_commands_go_to_no_later_node_on_sqlite(sqlite_app):
    # SQLite gave a deleted node's id to the next node: the controller keys its links, their
    # latest resources frames and the commands it runs by node id, so the old host's link could
    # pass for the new node's until the next round, and the audit log put both under one id. A
    # command's id likewise: the controller marks the command it ran done by id, so the old
    # node's, finishing late, would have marked the new node's done before it ever ran.
    from app.services import users
    from tests.conftest import STRONG_PASSWORD

    admin = users.create(None, "admin", STRONG_PASSWORD, role="admin")
    environment = catalog.create(admin, Environment, "staging")
    old, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    nodes.rotate_token(admin, old)
    old_id, (old_command,) = old.id, [command.id for command in _commands(old)]
    nodes.delete(admin, old)
    new, _token, _command = nodes.add(admin, environment, "node-2", "10.0.0.6")
    nodes.rotate_token(admin, new)
    (new_command,) = [command.id for command in _commands(new)]
    assert new.id > old_id and new_command > old_command


def test_audit_entries_hold_no_token_and_no_verifier(added, admin):
    node, token, _command = added
    tokens = [token]
    tokens.append(nodes.rotate_token(admin, node)[1])
    nodes.revoke_token(admin, node)
    tokens.append(nodes.rotate_token(admin, node)[1])
    _make_untrusted(node)
    nodes.approve_thumbprint(admin, node, PRESENTED)
    nodes.set_enabled(admin, node, False)
    nodes.update(admin, node, port=5001)
    entries = db.session.scalars(
        select(AuditEntry).where(AuditEntry.target_type == "node").order_by(AuditEntry.id)).all()
    assert [e.action for e in entries] == [
        "node.create", "node.rotate_token", "node.revoke_token", "node.rotate_token",
        "node.approve_thumbprint", "node.disable", "node.update"]
    text = repr([(e.action, e.target_name, e.details) for e in entries])
    for secret in tokens + [verifier_for(t) for t in tokens]:
        assert secret not in text


def test_users_with_a_grant_on_the_environment_may_view_its_nodes(spec_example):
    ex = spec_example
    node, _token, _command = nodes.add(ex["admin"], ex["environment"], "node-1", "10.0.0.5")
    elsewhere = catalog.create(ex["admin"], Environment, "production")
    hidden, _token, _command = nodes.add(ex["admin"], elsewhere, "node-9", "10.0.0.9")
    for user in (ex["reader"], ex["writer"]):
        assert access.can(user, "view", node) and not access.can(user, "view", hidden)
        assert not access.can(user, "manage", node)
        assert not access.can(user, "create", Node)
        assert db.session.scalars(access.visible(user, Node)).all() == [node]
        assert db.session.scalars(access.visible(user, NodeCommand)).all() == []
    assert not access.can(ex["outsider"], "view", node)
    assert db.session.scalars(access.visible(ex["outsider"], Node)).all() == []
    assert access.can(ex["admin"], "manage", node) and access.can(ex["admin"], "create", Node)
    assert len(db.session.scalars(access.visible(ex["admin"], Node)).all()) == 2


def test_a_second_rotation_before_the_first_reached_the_agent_falls_back_to_what_the_agent_holds(
        added, admin):
    # The agent holds the first token until a rotation reaches it; only the newest rotation goes.
    node, first_token, _command = added
    nodes.rotate_token(admin, node)
    node, newest, _command = nodes.rotate_token(admin, node)
    first, second = _commands(node, nodes.ROTATE_TOKEN)
    assert first.done_at is not None and first.result == "superseded by a newer rotation"
    assert first.payload_ciphertext is None and second.done_at is None
    payload = keyring().decrypt(second.payload_ciphertext, "node_command.payload")
    assert nodes.read_rotation(payload) == (verifier_for(newest), verifier_for(first_token))
