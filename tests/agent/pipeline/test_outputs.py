"""Step outputs survive an agent restart (issue #14.7), kept as securely as secrets: sealed on
disk with the deployment's output key, which only the control plane holds and sends again.
Real engine; the control plane's part is played by calling the service as the link would."""
import secrets
import uuid

import pytest

from agent import labels as L

from ..executor.helpers import idle_service
from .conftest import dump, run_to_end

pytestmark = pytest.mark.docker

DB_PASSWORD = f"pw-{uuid.uuid4().hex}"


def stack(deployment_id, images, busybox_image, fail_on_rollback=False):
    """mkdb (a plugin with a rollback) makes a URL with a password and marks it secret; web
    gets it through ${steps.mkdb.outputs.url}."""
    return {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 1,
            "limits": {"cpus": 0.5, "memory_mb": 128}, "steps": [
                {"id": "mkdb", "kind": "plugin", "image": images["echo"], "rollback": True,
                 "params": {"print_outputs": True, "fail_on_rollback": fail_on_rollback,
                            "outputs": {"url": "postgres://app:${secrets.DB_PASSWORD}@db/app", "rows": 3},
                            "secret_outputs": ["url"]}},
                {"id": "web", "kind": "service", "image": busybox_image, "command": idle_service(),
                 "depends_on": ["mkdb"], "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}"}},
            ]}


def entry(spec, key):
    return {"deployment": spec, "secrets": {"DB_PASSWORD": DB_PASSWORD}, "output_key": key}


def web_container(docker_client, agent, deployment_id):
    found = docker_client.containers.list(all=True, filters={"label": [
        f"{L.NODE}={agent.executor.node_id}", f"{L.DEPLOYMENT}={deployment_id}", f"{L.STEP}=web"]})
    return found[0] if found else None


def deployed(make_agent, images, busybox_image, fail_on_rollback=False):
    first = make_agent()
    deployment_id, key = f"dep-{uuid.uuid4().hex[:6]}", secrets.token_hex(32)
    spec = stack(deployment_id, images, busybox_image, fail_on_rollback)
    run = run_to_end(first, entry(spec, key))
    assert run["status"] == "succeeded", dump(run)
    return first, deployment_id, spec, key


def restarted(make_agent, first):
    """A new agent process on the same data directory: its memory is empty."""
    return make_agent(node_id=first.executor.node_id, data_dir=first.settings.data_dir)


def rollback_lines(agent, deployment_id):
    delete_runs = agent.store._all("SELECT run_id FROM runs WHERE deployment_id = ? AND kind = 'delete' "
                                   "ORDER BY started_at", (deployment_id,))
    return agent.store.step_logs(delete_runs[-1]["run_id"], "mkdb")


def test_after_a_restart_the_sync_brings_back_outputs_for_healing_redaction_and_rollback(
        make_agent, docker_client, plugin_images, busybox_image):
    first, deployment_id, spec, key = deployed(make_agent, plugin_images, busybox_image)
    first.store.close()
    data = b"".join(p.read_bytes() for p in first.settings.data_dir.rglob("*") if p.is_file())
    assert DB_PASSWORD.encode() not in data  # the secret output is on disk sealed only

    second = restarted(make_agent, first)
    web_container(docker_client, second, deployment_id).remove(force=True)
    synced = second.sync({"deployments": [entry(spec, key)], "keep": [deployment_id]})
    assert synced["kept"] == [deployment_id]
    second.reconcile()  # heals web: its environment needs mkdb's output
    web = web_container(docker_client, second, deployment_id)
    assert f"DATABASE_URL=postgres://app:{DB_PASSWORD}@db/app" in web.attrs["Config"]["Env"]
    assert second.store.get_deployment(deployment_id)["status"] == "ready"
    assert second.memory[deployment_id].redact(f"x {DB_PASSWORD} y") == "x [redacted] y"

    third = restarted(make_agent, second)  # and once more: a delete sent with the key
    result = third.delete({"deployment_id": deployment_id, "secrets": {"DB_PASSWORD": DB_PASSWORD},
                           "output_key": key})
    third.wait_idle(deployment_id, 60)
    assert third.store.get_run(result["run_id"])["status"] == "succeeded"
    lines = rollback_lines(third, deployment_id)
    # The rollback was given the outputs, and the secret one stays hidden in its log.
    assert any('"rows": 3' in line and "[redacted]" in line for line in lines), lines
    assert third.store.get_deployment(deployment_id) is None
    assert third.store.sealed_outputs(deployment_id) == {}


def test_outputs_do_not_open_without_the_key_and_the_deployment_waits_for_it(
        make_agent, docker_client, plugin_images, busybox_image):
    first, deployment_id, spec, key = deployed(make_agent, plugin_images, busybox_image)
    second = restarted(make_agent, first)
    web_container(docker_client, second, deployment_id).remove(force=True)
    # Synced with another key (or none): the outputs stay sealed; web cannot be made and the
    # deployment says why, and the rest of the reconcile goes on.
    second.sync({"deployments": [entry(spec, secrets.token_hex(32))], "keep": [deployment_id]})
    other = run_to_end(second, entry(stack(f"dep-{uuid.uuid4().hex[:6]}", plugin_images, busybox_image),
                                     secrets.token_hex(32)))
    assert other["status"] == "succeeded"
    other_id = other["deployment_id"]
    web_container(docker_client, second, other_id).remove(force=True)
    second.reconcile()
    deployment = second.store.get_deployment(deployment_id)
    assert deployment["status"] == "degraded" and "could not recreate web" in deployment["message"]
    assert DB_PASSWORD not in deployment["message"]
    assert web_container(docker_client, second, other_id).status == "running"  # healed all the same
    for deployment in (deployment_id, other_id):
        second.delete({"deployment_id": deployment})
        second.wait_idle(deployment, 60)


def test_a_rollback_that_fails_fails_the_delete_which_is_kept_for_its_retry(
        make_agent, docker_client, plugin_images, busybox_image):
    agent, deployment_id, _spec, _key = deployed(make_agent, plugin_images, busybox_image,
                                                 fail_on_rollback=True)
    result = agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)
    run = agent.store.get_run(result["run_id"])
    assert run["status"] == "failed" and "mkdb: rollback failed" in run["error"]
    assert web_container(docker_client, agent, deployment_id) is None  # the containers are gone
    assert agent.store.get_deployment(deployment_id)["status"] == "deleting"  # not "deleted"
    again = agent.delete({"deployment_id": deployment_id})
    assert again["run_id"] not in (None, result["run_id"])  # the retry runs the rollback again
    agent.wait_idle(deployment_id, 60)
    assert len([line for line in rollback_lines(agent, deployment_id) if "rolling back" in line]) == 1


def test_deleting_a_failed_deployment_does_not_roll_back_again(make_agent, plugin_images, busybox_image):
    # Its failed run rolled back what it made; a second rollback (with an empty memory, as the
    # sync's removal had) would undo what is not there, and now fails the delete if it fails.
    agent = make_agent()
    deployment_id, key = f"dep-{uuid.uuid4().hex[:6]}", secrets.token_hex(32)
    spec = stack(deployment_id, plugin_images, busybox_image)
    spec["steps"].append({"id": "boom", "kind": "plugin", "image": plugin_images["fail"],
                          "depends_on": ["mkdb"]})
    run = run_to_end(agent, entry(spec, key))
    assert run["status"] == "failed", dump(run)
    assert agent.store.get_deployment(deployment_id)["status"] == "failed"
    result = agent.delete({"deployment_id": deployment_id})
    agent.wait_idle(deployment_id, 60)
    assert agent.store.get_run(result["run_id"])["status"] == "succeeded"
    assert agent.store.step_logs(result["run_id"], "mkdb") == []  # not called again
    assert agent.store.get_deployment(deployment_id) is None
