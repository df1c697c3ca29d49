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

