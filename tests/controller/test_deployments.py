"""The controller's side of deployments: real agents deploy and delete busybox services as the
database asks; node links going away and coming back; cleanups that fail and are retried."""
import json
import time
from datetime import timedelta

import pytest
import sqlalchemy

from agent import protocol
from app.controller import deployments, state
from app.extensions import db
from app.models import DeploymentEvent, Node, NodeCommand
from app.models.types import utcnow
from app.services import nodes
from tests.dockertools import left_behind

from .conftest import (
    deployment_row,
    leave_command,
    node_row,
    wait_for_deployment,
    wait_for_status,
    web_step,
)
from .netfaults import StuckRegistry

TOKEN = "node-token-deployments-test-0001"
docker = pytest.mark.docker  # these drive a real agent and the local Docker engine


def request_delete(deployment_id):
    """What the web tier does when a user deletes a deployment."""
    deployment = deployment_row(deployment_id)
    assert deployments.move(deployment, "deleting", "deleted by a user")
    deployment.delete_requested_at = utcnow()
    db.session.commit()


def statuses_seen(deployment_id):
    events = db.session.scalars(db.select(DeploymentEvent).where(
        DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.kind == "status")
        .order_by(DeploymentEvent.id)).all()
    return [(event.data["from"], event.data["to"]) for event in events]


def step_lines(deployment_id, until, timeout=10):
    """The deployment's step history, once a line starting with `until` is in it."""
    deadline = time.monotonic() + timeout
    while True:
        db.session.expire_all()
        lines = db.session.scalars(db.select(DeploymentEvent.message).where(
            DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.kind == "step")
            .order_by(DeploymentEvent.id)).all()
        if any(line.startswith(until) for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no {until!r} in {lines}"
        time.sleep(0.1)


def labelled_for(agent, deployment_id):
    return [f"org.nullops.node={agent.node_id}", f"org.nullops.deployment=dep-{deployment_id}"]


@pytest.fixture
def linked(agents, add_node, controller):
    """A real agent, its node online under an in-process controller: (agent, node id, controller)."""
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    return agent, node_id, active


@docker
def test_a_pending_deployment_becomes_ready_within_its_limits_and_its_delete_leaves_nothing(
        linked, make_deployment, docker_client, busybox_image):
    agent, node_id, _active = linked
    deployment_id = make_deployment(node_id)
    deployment = wait_for_deployment(deployment_id, "ready")
    assert statuses_seen(deployment_id) == [("pending", "deploying"), ("deploying", "ready")]
    assert deployment.run_id and deployment.progress == {"web": "done"}
    host_port = deployment.published["web"]["ports"]["8000"]
    assert isinstance(host_port, int)
    steps = step_lines(deployment_id, until="run succeeded")  # the run ends after "ready"
    assert steps[-3:-1] == ["web running", "web done"]

    (container,) = docker_client.containers.list(filters={"label": labelled_for(agent, deployment_id)})
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000  # the project's 0.5 CPU
    assert container.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024

    request_delete(deployment_id)
    deployment = wait_for_deployment(deployment_id, "deleted", timeout=30)
    assert deployment.deleted_at is not None and deployment.run_id is None
    assert deployment.cleanup_attempts == 1  # one delete run, then a delete that found nothing
    assert f"nothing labelled dep-{deployment_id} is left" in deployment.status_message
    assert left_behind(docker_client, labelled_for(agent, deployment_id)) == []
    assert statuses_seen(deployment_id)[-2:] == [("ready", "deleting"), ("deleting", "deleted")]


@docker
def test_a_failing_step_fails_the_deployment_and_everything_is_rolled_back(
        linked, make_deployment, catalog, docker_client, busybox_image):
    agent, node_id, _active = linked
    registry_id = catalog["registry"].id
    broken = web_step(registry_id, "broken", command=("sh", "-c", "exit 3"), port=9000,
                      depends_on=["web"])
    deployment_id = make_deployment(node_id, [web_step(registry_id), broken])
    deployment = wait_for_deployment(deployment_id, "failed")
    assert "broken" in deployment.status_message
    assert deployment.progress["web"] == "done" and deployment.progress["broken"] == "failed"
    assert left_behind(docker_client, labelled_for(agent, deployment_id)) == []


@docker
def test_a_spec_the_agent_refuses_fails_with_the_agents_message(linked, make_deployment, catalog,
                                                               busybox_image):
    _agent, node_id, _active = linked
    step = web_step(catalog["registry"].id, env={"PASSWORD": "${secrets.DB_PASSWORD}"})
    deployment_id = make_deployment(node_id, [step])  # the project has no such secret
    deployment = wait_for_deployment(deployment_id, "failed")
    assert "secrets not sent: DB_PASSWORD" in deployment.status_message
    assert deployment.run_id is None


@docker
def test_deployments_go_offline_with_their_node_and_are_ready_again_when_it_returns(
        agents, linked, make_deployment, busybox_image):
    agent, node_id, _active = linked
    running = make_deployment(node_id)
    wait_for_deployment(running, "ready")
    agent.stop()
    wait_for_status(node_id, "offline", timeout=20)
    assert deployment_row(running).status == "offline"
    assert "node offline" in deployment_row(running).status_message
    waiting = make_deployment(node_id)
    time.sleep(1)
    assert deployment_row(waiting).status == "pending"  # nothing to hand it to

    agents.restart(agent, TOKEN)
    wait_for_status(node_id, "online", timeout=30)
    wait_for_deployment(running, "ready", timeout=30)  # the agent kept it: the sync says so
    wait_for_deployment(waiting, "ready", timeout=30)
    assert ("offline", "ready") in statuses_seen(running)


@docker
def test_a_disabled_node_keeps_its_link_until_its_last_deployment_is_deleted(
        linked, make_deployment, admin, docker_client, busybox_image):
    """Graceful decommissioning (the spec): disabled, no new deployments, the ones there keep
    running and can still be deleted; once the node holds none, the link goes."""
    agent, node_id, active = linked
    running = make_deployment(node_id)
    wait_for_deployment(running, "ready")
    nodes.set_enabled(admin, node_row(node_id), False)
    time.sleep(1)  # several controller rounds
    assert node_row(node_id).status == "online" and node_id in active.manager.online_node_ids()
    assert deployment_row(running).status == "ready"

    request_delete(running)
    wait_for_deployment(running, "deleted", timeout=30)  # the agent removed it, checked
    assert left_behind(docker_client, labelled_for(agent, running)) == []
    node = wait_for_status(node_id, "disabled")
    assert "does not connect" in node.status_reason
    deadline = time.monotonic() + 10
    while node_id in active.manager.links:
        assert time.monotonic() < deadline, "the drained node's link is still up"
        time.sleep(0.1)


@docker
def test_a_cleanup_that_fails_is_shown_with_its_reason_and_retried(
        linked, make_deployment, docker_client, busybox_image, test_labels, monkeypatch):
    import app.controller.manager as manager

    monkeypatch.setattr(manager, "DELETE_CHECK_S", 0.5)
    agent, node_id, _active = linked
    deployment_id = make_deployment(node_id)
    wait_for_deployment(deployment_id, "ready")
    # A volume of the deployment that a foreign container holds: the agent cannot remove it.
    volume = docker_client.volumes.create(labels={**test_labels, "org.nullops.node": agent.node_id,
                                                  "org.nullops.deployment": f"dep-{deployment_id}"})
    holder = docker_client.containers.create(busybox_image, ["sleep", "60"], labels=test_labels,
                                             volumes={volume.name: {"bind": "/data"}})
    request_delete(deployment_id)
    deployment = wait_for_deployment(deployment_id, "cleanup_failed", timeout=30)
    assert "delete run failed" in deployment.status_message
    assert f"org.nullops.deployment=dep-{deployment_id}" in deployment.status_message
    assert timedelta(seconds=50) < deployment.next_attempt_at - utcnow() <= timedelta(minutes=1)

    holder.remove(force=True)  # someone removes the obstacle; the retry comes when it is due
    deployment.next_attempt_at = utcnow()
    db.session.commit()
    deployment = wait_for_deployment(deployment_id, "deleted", timeout=30)
    assert left_behind(docker_client, labelled_for(agent, deployment_id)) == []
    assert ("cleanup_failed", "deleting") in statuses_seen(deployment_id)


@docker
def test_auto_cleanup_deletes_a_deployment_whose_inactivity_period_ran_out(
        app, linked, make_deployment, catalog, docker_client, busybox_image, monkeypatch):
    agent, node_id, active = linked
    catalog["project"].cleanup_minutes = 1
    deployment_id = make_deployment(node_id)
    wait_for_deployment(deployment_id, "ready")
    deployment = deployment_row(deployment_id)
    deployment.last_activity_at = utcnow() - timedelta(days=1)
    db.session.commit()
    active.scheduler.modify_job("auto-cleanup", next_run_time=utcnow())
    deployment = wait_for_deployment(deployment_id, "deleted", timeout=30)
    assert deployment.delete_requested_at is not None
    assert left_behind(docker_client, labelled_for(agent, deployment_id)) == []


@docker
def test_a_prepull_stuck_on_its_registry_holds_up_neither_deployments_nor_deletes(
        linked, make_deployment, docker_client, busybox_image):
    """A prepull may wait 10 minutes for the agent's pulls; meanwhile deployments are applied
    and deleted as usual, and the prepull is not sent again every round."""
    agent, node_id, _active = linked
    registry = StuckRegistry()
    try:
        stuck = json.dumps([{"image": f"127.0.0.1:{registry.port}/nullops-test/stuck-plugin:1"}])
        command_id = leave_command(node_id, "prepull", stuck)
        registry.wait_for_pulls(1)  # the agent is pulling, and stays so

        deployment_id = make_deployment(node_id)
        wait_for_deployment(deployment_id, "ready", timeout=60)
        request_delete(deployment_id)
        wait_for_deployment(deployment_id, "deleted", timeout=60)
        assert left_behind(docker_client, labelled_for(agent, deployment_id)) == []

        db.session.expire_all()
        assert db.session.get(NodeCommand, command_id).done_at is None, "the prepull was stuck all along"
        assert registry.pulls == 1, "a prepull in flight must not be sent again"
    finally:
        registry.close()  # the pull fails now and the prepull ends


# --- without agents: the database side --------------------------------------------------------------
def test_the_auto_cleanup_job_calls_expire_due_in_an_app_context(app, controller, monkeypatch):
    from flask import has_app_context

    import app.services.deployments as service

    calls = []

    def expire_due(now):
        calls.append((now, has_app_context()))

    monkeypatch.setattr(service, "expire_due", expire_due)
    monkeypatch.setitem(app.config, "NULLOPS_CLEANUP_INTERVAL_S", 1)
    active = controller()
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline, "expire_due was never called"
        time.sleep(0.05)
    now, in_context = calls[0]
    assert in_context and now.tzinfo is not None and abs(utcnow() - now) < timedelta(seconds=5)
    job = active.scheduler.get_job("auto-cleanup")
    assert job.trigger.interval == timedelta(seconds=1)
    assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time


@pytest.fixture
def node_id(add_node):
    return add_node(5999, TOKEN, name="db-only")


def test_deletes_that_keep_finding_objects_end_in_cleanup_failed_and_back_off(node_id, make_deployment):
    deployment_id = make_deployment(node_id, status="deleting")
    running = {"status": "running"}
    for attempt, run_id in enumerate(("run-1", "run-2", "run-3"), start=1):
        assert deployments.record_delete(deployment_id, {**running, "run_id": run_id}) == deployments.WAITING
        assert deployment_row(deployment_id).cleanup_attempts == attempt
    # The same run answered again (its events came, or a new link): no new attempt.
    assert deployments.record_delete(deployment_id, {**running, "run_id": "run-3"}) == deployments.WAITING
    assert deployment_row(deployment_id).cleanup_attempts == 3
    assert deployments.record_delete(deployment_id, {**running, "run_id": "run-4"}) == deployments.FAILED
    deployment = deployment_row(deployment_id)
    assert deployment.status == "cleanup_failed"
    assert "after 3 deletes" in deployment.status_message
    assert f"org.nullops.deployment=dep-{deployment_id}" in deployment.status_message
    first = deployment.next_attempt_at
    assert timedelta(seconds=55) < first - utcnow() <= timedelta(minutes=1)

    online = {node_id}
    assert deployments.due_work(online, set(), first - timedelta(seconds=1)) == ([], [])
    assert deployment_row(deployment_id).status == "cleanup_failed"
    _apply, to_delete = deployments.due_work(online, set(), first)
    assert to_delete == [(deployment_id, node_id, {"deployment_id": f"dep-{deployment_id}"})]
    deployment = deployment_row(deployment_id)
    assert deployment.status == "deleting" and deployment.cleanup_attempts == 0

    deployments.fail_cleanup(deployment_id, "the agent's delete run failed (engine error)")
    deployment = deployment_row(deployment_id)
    assert deployment.status == "cleanup_failed" and "engine error" in deployment.status_message
    assert timedelta(seconds=115) < deployment.next_attempt_at - utcnow() <= timedelta(minutes=2)

    deployments.due_work(online, set(), deployment.next_attempt_at)
    nothing_left = {"run_id": None, "status": "deleted"}
    assert deployments.record_delete(deployment_id, nothing_left) == deployments.DELETED
    deployment = deployment_row(deployment_id)
    assert deployment.status == "deleted" and deployment.deleted_at and deployment.run_id is None


def test_a_deleting_deployment_whose_node_was_removed_is_deleted_with_a_message(node_id, make_deployment):
    deployment_id = make_deployment(node_id, status="deleting")
    db.session.delete(db.session.get(Node, node_id))
    db.session.commit()
    assert deployments.due_work(set(), set(), utcnow()) == ([], [])
    deployment = deployment_row(deployment_id)
    assert deployment.status == "deleted" and "node was removed" in deployment.status_message


def test_only_pending_and_deleting_deployments_of_online_nodes_without_a_call_in_progress_are_due(
        node_id, make_deployment):
    pending, deleting = make_deployment(node_id), make_deployment(node_id, status="deleting")
    make_deployment(node_id, status="ready")
    to_apply, to_delete = deployments.due_work({node_id}, set(), utcnow())
    assert [(i, n) for i, n, _params in to_apply] == [(pending, node_id)]
    assert to_apply[0][2]["deployment"]["deployment_id"] == f"dep-{pending}"
    assert to_delete == [(deleting, node_id, {"deployment_id": f"dep-{deleting}"})]  # never sent
    assert deployments.due_work(set(), set(), utcnow()) == ([], [])  # node offline: they wait
    assert deployments.due_work({node_id}, {pending, deleting}, utcnow()) == ([], [])


def test_a_node_going_offline_takes_its_running_deployments_offline_but_not_pending_ones(
        node_id, make_deployment):
    ids = {status: make_deployment(node_id, status=status)
           for status in ("pending", "deploying", "ready", "degraded", "failed", "deleting")}
    node = db.session.get(Node, node_id)
    node.status = "online"
    db.session.commit()
    state.mark(node_id, "offline", "link lost (agent stopping)")
    after = {status: deployment_row(i).status for status, i in ids.items()}
    assert after == {"pending": "pending", "deploying": "offline", "ready": "offline",
                     "degraded": "offline", "failed": "failed", "deleting": "deleting"}
    assert "link lost" in deployment_row(ids["ready"]).status_message


def test_the_desired_state_leaves_out_failed_and_deleting_ones_and_carries_secrets(
        node_id, make_deployment, catalog):
    step = web_step(catalog["registry"].id, env={"PASSWORD": "${secrets.DB_PASSWORD}"})
    secrets = {"DB_PASSWORD": "s3cret"}
    wanted = [make_deployment(node_id, [step], status=status, secrets=secrets if i == 0 else None)
              for i, status in enumerate(("pending", "deploying", "ready", "degraded", "offline"))]
    left = {status: make_deployment(node_id, [step], status=status)
            for status in ("failed", "deleting", "cleanup_failed", "deleted")}
    desired = deployments.desired_state(node_id)
    entries = desired["deployments"]
    assert [entry["deployment"]["deployment_id"] for entry in entries] == [f"dep-{i}" for i in wanted]
    assert all(entry["secrets"] == {"DB_PASSWORD": "s3cret"} for entry in entries)
    assert all(len(entry["output_key"]) == 64 for entry in entries)
    assert entries[0]["deployment"]["limits"] == {"cpus": 0.5, "memory_mb": 64}
    # The round deletes these itself, with what their rollbacks need: the sync keeps them.
    kept = [f"dep-{left[status]}" for status in ("failed", "deleting", "cleanup_failed")]
    assert desired["keep"] == sorted([f"dep-{i}" for i in wanted] + kept,
                                     key=lambda agent_id: int(agent_id[4:]))


def test_the_sync_answer_sets_what_the_agent_runs(node_id, make_deployment):
    applied, kept, degraded, refused, deleting = (
        make_deployment(node_id, status=s) for s in ("offline", "offline", "offline", "pending", "deleting"))
    deployments.record_sync(node_id, {
        "applied": [f"dep-{applied}", f"dep-{deleting}"], "kept": [f"dep-{kept}", f"dep-{degraded}"],
        "degraded": [f"dep-{degraded}"], "deleted": ["dep-999999"],
        "errors": {f"dep-{refused}": "steps[0]: unknown field 'x'"}})
    assert deployment_row(applied).status == "deploying"
    assert deployment_row(kept).status == "ready"
    assert deployment_row(degraded).status == "degraded"
    assert deployment_row(refused).status == "failed"
    assert "unknown field" in deployment_row(refused).status_message
    assert deployment_row(deleting).status == "deleting"  # deleted meanwhile: the round's now


class Statements:
    """Counts the SQL statements the session's engine runs inside the block."""

    def __enter__(self):
        self.count = 0
        sqlalchemy.event.listen(db.engine, "before_cursor_execute", self._seen)
        return self

    def _seen(self, *_args):
        self.count += 1

    def __exit__(self, *_exc):
        sqlalchemy.event.remove(db.engine, "before_cursor_execute", self._seen)


def test_a_fleets_desired_state_and_sync_answers_take_the_same_statements_for_3_or_12_deployments(
        add_node, make_deployment, catalog):
    """After a controller restart a whole fleet syncs at once: reading each deployment's kept
    spec and secrets one statement at a time took 75 s for 10,000 (issue 19)."""
    step = web_step(catalog["registry"].id, env={"PASSWORD": "${secrets.DB_PASSWORD}"})
    nodes_ = [add_node(6001 + i, TOKEN, name=f"fleet-{i}") for i in range(3)]
    counts = []
    for per_node in (1, 4):
        made = {node: [make_deployment(node, [step], status="ready",
                                       secrets={"DB_PASSWORD": "s3cret"} if not counts and node == nodes_[0]
                                       else None)
                       for _ in range(per_node)] for node in nodes_}
        deployments.desired_states([(node,) for node in nodes_])  # the specs kept at the first sync
        with Statements() as reading:
            desired = deployments.desired_states([(node,) for node in nodes_])
        answers = [(node, {"kept": [f"dep-{i}" for i in made[node]]}) for node in nodes_]
        with Statements() as answering:
            deployments.record_syncs(answers)
        assert all(entry["secrets"] == {"DB_PASSWORD": "s3cret"}
                   for state_ in desired for entry in state_["deployments"])
        counts.append((reading.count, answering.count))
    assert counts[0] == counts[1]


def test_a_sync_answer_written_after_newer_events_does_not_undo_them(node_id, make_deployment):
    """The answer to state.sync and the events after it are written by two writers: a run that
    was going on when the sync came ("applied") and whose "ready" was stored first stays ready
    (it went back to deploying for good: the chaos suite's controller kill), and a ready copy
    ("kept") does not hide a "degraded" the reconcile reported meanwhile."""
    finished, degraded, waiting = (make_deployment(node_id, status=s)
                                   for s in ("deploying", "degraded", "offline"))
    deployments.apply_event(node_id, protocol.DEPLOYMENT_STATUS,
                            {"deployment_id": f"dep-{finished}", "status": "ready", "services": {}})
    assert deployment_row(finished).status == "ready"
    deployments.record_sync(node_id, {"applied": [f"dep-{finished}", f"dep-{waiting}"],
                                      "kept": [f"dep-{degraded}"], "deleted": [], "errors": {}})
    assert deployment_row(finished).status == "ready"
    assert deployment_row(degraded).status == "degraded"
    assert deployment_row(waiting).status == "deploying"  # offline: the run goes on, nothing said so


def test_events_update_progress_and_status_and_unknown_or_deleted_ones_are_ignored(
        node_id, make_deployment):
    deployment_id = make_deployment(node_id, status="deploying")
    gone = make_deployment(node_id, status="deleted")
    agent_id = f"dep-{deployment_id}"
    progress = protocol.RUN_PROGRESS
    deployments.apply_events([
        (node_id, progress, {"run_id": "run-a", "deployment_id": agent_id, "status": "running",
                             "message": "pipeline version 1"}, None),
        (node_id, progress, {"run_id": "run-a", "deployment_id": agent_id, "status": "running",
                             "step_id": "web", "step_status": "running"}, None),
        (node_id, progress, {"run_id": "run-a", "deployment_id": f"dep-{gone}", "status": "running",
                             "step_id": "web", "step_status": "running"}, None),
        (node_id, progress, {"run_id": "run-x", "deployment_id": "dep-424242", "status": "running"}, None),
        (node_id, progress, {"run_id": "run-x", "deployment_id": "shop-1", "status": "running"}, None),
        (node_id + 1, protocol.DEPLOYMENT_STATUS, {"deployment_id": agent_id, "status": "failed"}, None),
        (node_id, progress, {"run_id": "run-a", "deployment_id": agent_id, "status": "running",
                             "step_id": "web", "step_status": "done"}, None),
        (node_id, protocol.DEPLOYMENT_STATUS, {"deployment_id": agent_id, "status": "ready",
                                               "services": {"web": {"ports": {"8000": 49153}}}}, None),
    ])
    deployment = deployment_row(deployment_id)
    assert deployment.status == "ready" and deployment.run_id == "run-a"
    assert deployment.progress == {"web": "done"}
    assert deployment.published == {"web": {"ports": {"8000": 49153}}}
    lines = db.session.scalars(db.select(DeploymentEvent.message).where(
        DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.kind == "step")
        .order_by(DeploymentEvent.id)).all()
    assert lines == ["run running: pipeline version 1", "web running", "web done"]
    assert deployment_row(gone).progress == {}
    assert db.session.scalar(db.select(db.func.count()).select_from(DeploymentEvent)
                             .where(DeploymentEvent.deployment_id == gone)) == 0

    # A deployment being deleted keeps that status whatever the agent reports meanwhile.
    request_delete(deployment_id)
    deployments.apply_event(node_id, protocol.DEPLOYMENT_STATUS, {"deployment_id": agent_id,
                                                                  "status": "failed"})
    assert deployment_row(deployment_id).status == "deleting"
    # A new run (a sync re-applied it) starts its steps over.
    other = make_deployment(node_id, status="ready")
    deployments.apply_events([(node_id, progress, {"run_id": "run-b", "deployment_id": f"dep-{other}",
                                                   "status": "running", "step_id": "web",
                                                   "step_status": "running"}, None)])
    assert deployment_row(other).run_id == "run-b"
    assert deployment_row(other).progress == {"web": "running"}


def test_a_deployment_whose_spec_cannot_be_built_fails_without_holding_up_the_others(
        node_id, make_deployment, catalog):
    broken = make_deployment(node_id, [web_step(catalog["registry"].id + 1000)])  # no such registry
    fine = make_deployment(node_id)
    to_apply, _to_delete = deployments.due_work({node_id}, set(), utcnow())
    assert [i for i, _node, _params in to_apply] == [fine]
    assert deployment_row(broken).status == "failed"
    assert "could not build its spec" in deployment_row(broken).status_message
    desired = deployments.desired_state(node_id)
    assert [e["deployment"]["deployment_id"] for e in desired["deployments"]] == [f"dep-{fine}"]


@docker
def test_a_ready_deployment_is_not_run_again_after_routine_admin_changes_and_a_reconnect(
        agents, linked, make_deployment, catalog, busybox_image):
    # Issue #14.3: each sync compiled the spec anew from today's settings; a changed base domain
    # made the agent re-run every step of a ready deployment (and roll it back on a failure).
    from app.models import ProjectSecret

    agent, node_id, _active = linked
    step = web_step(catalog["registry"].id, env={"PASSWORD": "${secrets.DB_PASSWORD}"})
    deployment_id = make_deployment(node_id, [step], secrets={"DB_PASSWORD": "pw-1"})
    run_id = wait_for_deployment(deployment_id, "ready").run_id
    catalog["environment"].base_domain = "renamed.example"
    # A secret it was made with is removed from the project: it keeps running without it.
    db.session.execute(db.delete(ProjectSecret).where(ProjectSecret.project_id == catalog["project"].id))
    db.session.commit()
    agent.stop()
    wait_for_status(node_id, "offline", timeout=20)
    agents.restart(agent, TOKEN)
    wait_for_status(node_id, "online", timeout=30)
    deployment = wait_for_deployment(deployment_id, "ready", timeout=30)
    assert statuses_seen(deployment_id)[-2:] == [("ready", "offline"), ("offline", "ready")]
    assert deployment.run_id == run_id  # no new run


def test_a_delete_carries_what_the_rollbacks_need_once_the_deployment_was_sent(
        node_id, make_deployment, catalog):
    # Issue #14.7: a delete after an agent restart ran rollback plugins without secrets or outputs.
    step = web_step(catalog["registry"].id, env={"PASSWORD": "${secrets.DB_PASSWORD}"})
    deployment_id = make_deployment(node_id, [step], secrets={"DB_PASSWORD": "s3cret"})
    [(_id, _node, sent)] = deployments.due_work({node_id}, set(), utcnow())[0]
    deployment = deployment_row(deployment_id)
    deployment.status, deployment.status_message = "deleting", "delete requested"
    db.session.commit()
    [(_id, _node, params)] = deployments.due_work({node_id}, set(), utcnow())[1]
    assert params == {"deployment_id": f"dep-{deployment_id}", "secrets": {"DB_PASSWORD": "s3cret"},
                      "registries": {}, "output_key": sent["output_key"]}
    assert deployments.desired_state(node_id)["keep"] == [f"dep-{deployment_id}"]  # the sync keeps it


def test_events_replayed_after_a_lost_ack_are_not_stored_twice_until_the_agent_has_a_new_outbox(
        node_id, make_deployment):
    # Issue #14.8: the agent replays what it was not told was stored; history doubled.
    deployment_id = make_deployment(node_id, status="deploying")
    state.mark_online(node_id, None, {"node_id": "n", "agent_version": "x", "outbox": "outbox-1"})

    def step(seq, step_status):
        return (node_id, protocol.RUN_PROGRESS, {"run_id": "run-a", "deployment_id": f"dep-{deployment_id}",
                                                 "status": "running", "step_id": "web",
                                                 "step_status": step_status}, seq)

    def lines():
        return db.session.scalars(db.select(DeploymentEvent.message).where(
            DeploymentEvent.deployment_id == deployment_id, DeploymentEvent.kind == "step")
            .order_by(DeploymentEvent.id)).all()

    deployments.apply_events([step(1, "pending"), step(2, "running")])
    deployments.apply_events([step(1, "pending"), step(2, "running"), step(3, "done")])  # the replay
    assert lines() == ["web pending", "web running", "web done"]
    # A new data directory on the node: its outbox counts from 1 again.
    state.mark_online(node_id, None, {"node_id": "n", "agent_version": "x", "outbox": "outbox-2"})
    deployments.apply_events([step(1, "running")])
    assert lines()[-1] == "web running" and len(lines()) == 4
