"""Issue 14, chaos: the node agent SIGKILLed at random points of runs (3 times in `make test`, 50
in `make chaos`), applies and deletes, and started again on its data directory. Every deployment
converges to ready or to fully rolled back (failed, nothing left), every delete to deleted, and
nothing labelled with the node is left that the database does not account for."""
import time

import pytest

from tests.chaos import harness
from tests.chaos.conftest import TOKEN, request_delete, three_steps

pytestmark = pytest.mark.postgres
KILLS = harness.count(3, 50)
CONVERGE_S = 120   # generous: 2 loaded cores, and a CI run beside this one


def test_agent_killed_at_random_points_converges_and_leaks_nothing(
        linked, agents, make_deployment, catalog, docker_client, plugin_images):
    agent, node_id, _controller = linked
    rng, seed = harness.seeded("agent_kill")
    scenario = harness.Scenario("agent_kill", "SIGKILL the agent at random points of runs", seed)
    registry_id, echo = catalog["registry"].id, plugin_images["echo"]
    audit_before = harness.last_audit_id()
    ready = []       # deployments that converged to ready, candidates for a delete
    made = []
    try:
        for number in range(KILLS):
            steps = three_steps(registry_id, echo, db_delay=rng.uniform(0, 1.0),
                                plugin_sleep=rng.uniform(0, 1.5))
            created = make_deployment(node_id, steps, name=f"k{number}")
            made.append(created)
            wanted = {created: ("ready", "failed")}
            if ready and rng.random() < 0.5:
                victim = ready.pop(rng.randrange(len(ready)))
                request_delete(victim)
                wanted[victim] = ("deleted",)
            time.sleep(rng.uniform(0, 6.0))
            where = ", ".join(f"dep-{i} {_phase(i)}" for i in wanted)
            agent.proc.kill()
            agent.proc.wait(10)
            killed = time.monotonic()
            scenario.expected_link_drops += 1
            time.sleep(rng.choice((0, 0, 0.5, 2.0)))   # mostly at once, as a supervisor would
            agent = agents.restart(agent, TOKEN)
            try:
                reached, _s = harness.settle(wanted, CONVERGE_S)
                leaked, _s = harness.wait_clean(docker_client, agent.node_id, timeout=20)
                missing = harness.missing_services(
                    docker_client, agent.node_id, [i for i, s in reached.items() if s == "ready"])
            except AssertionError as exc:
                scenario.iteration(False)
                scenario.note(f"kill {number + 1} ({where}): {exc}")
                raise
            took = time.monotonic() - killed
            scenario.iteration(not leaked and not missing, took)
            scenario.leaked += leaked
            for deployment_id, status in reached.items():
                scenario.tally(f"ended {status}")
                if status == "ready" and deployment_id == created:
                    ready.append(created)
            print(f"[chaos] agent_kill {number + 1}/{KILLS}: killed at {where}; "
                  f"{ {f'dep-{i}': s for i, s in reached.items()} } in {took:.1f} s")
            if leaked:
                for deployment_id in wanted:
                    print(f"[chaos] dep-{deployment_id} history: {harness.history(deployment_id)}")
                print(f"[chaos] agent log:\n{agent.log[-6000:]}")
            assert not leaked, f"kill {number + 1} ({where}) left {leaked}"
            assert not missing, f"kill {number + 1} ({where}): ready but not running: {missing}"

        # Everything deleted at the end: nothing on the node, no live row, nothing in the agent's
        # own record.
        for deployment_id in made:
            request_delete(deployment_id)
        harness.settle({i: ("deleted",) for i in made}, CONVERGE_S)
        leaked, _s = harness.wait_clean(docker_client, agent.node_id, timeout=20)
        scenario.leaked += leaked
        assert not leaked, leaked
        assert harness.live_rows(node_id) == 0
        assert _eventually_empty(agent.data_dir) == {}, "the agent still records deployments"
    finally:
        scenario.link_drops = harness.link_drops(node_id, audit_before)
        scenario.save()
    assert scenario.converged == scenario.iterations == KILLS


def test_the_desired_state_is_read_after_the_events_the_agent_replays(
        agents, add_node, controller, make_deployment, catalog, docker_client, plugin_images,
        busybox_image, monkeypatch):
    """What the random kills found, made certain: an agent killed during a run rolls it back at
    its restart and replays that (run interrupted, deployment failed) on the new link. The
    controller read the desired state without waiting for those events, so the deployment was
    still offline there, went into the state.sync, and the agent ran it again: the database said
    failed, its containers ran. Storing events late (as a loaded database does) made it happen
    every time; now the sync waits for the replay."""
    from app.controller import deployments as controller_deployments

    store = controller_deployments.apply_events

    def late(items):
        time.sleep(0.5)
        return store(items)

    monkeypatch.setattr(controller_deployments, "apply_events", late)
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    harness.wait_node(node_id, "online", timeout=30)
    deployment_id = make_deployment(node_id, three_steps(catalog["registry"].id, plugin_images["echo"],
                                                         plugin_sleep=60))
    deadline = time.monotonic() + 60
    while (harness.db.session.get(harness.Deployment, deployment_id).progress or {}).get("seed") != "running":
        assert time.monotonic() < deadline, harness.history(deployment_id)
        time.sleep(0.05)
        harness.db.session.expire_all()
    agent.proc.kill()
    agent.proc.wait(10)
    harness.wait_node(node_id, "offline", timeout=30)
    agent = agents.restart(agent, TOKEN)
    harness.settle({deployment_id: ("failed",)}, 60)
    harness.wait_node(node_id, "online", timeout=30)
    time.sleep(3)   # a run started again by the sync would have made its first container by now
    leaked, _s = harness.wait_clean(docker_client, agent.node_id, timeout=10)
    assert not leaked, f"{leaked}; history: {harness.history(deployment_id)}"
    assert harness.statuses([deployment_id]) == {deployment_id: "failed"}


def _phase(deployment_id):
    """Where the deployment was when the agent died: status and its steps' progress."""
    row = harness.db.session.get(harness.Deployment, deployment_id)
    harness.db.session.refresh(row)
    steps = ",".join(f"{k}={v}" for k, v in (row.progress or {}).items())
    return f"{row.status}[{steps}]"


def _eventually_empty(data_dir, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        left = harness.agent_store(data_dir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)

