"""Issue 14, chaos: two `nullops controller` processes against one PostgreSQL; the active one is
SIGKILLed while deployments are being created and deleted (2 times in `make test`, 20 in
`make chaos`), or frozen with SIGSTOP past the leader lock's timeout. The standby takes over and
converges from the database: every create ends ready (the agent was never touched), every delete
deleted, nothing is left on the node that the database does not account for."""
import time

import pytest

from tests.chaos import harness
from tests.chaos.conftest import TOKEN, request_delete, wait_active
from tests.controller.conftest import wait_for_status, web_step

pytestmark = pytest.mark.postgres
KILLS = harness.count(2, 20)
CONVERGE_S = 120
TAKEOVER_S = 20          # after a SIGKILL: the lock goes with the session (docs/controller.md)
# A frozen leader keeps its session, and with it the lock, until the lock's own keepalive or
# timeout ends it (issue 14.6). How long the standby is given before the scenario is skipped as
# "not fixed yet", and the bound it is held to once it does take over ("within seconds").
FROZEN_WAIT_S = harness.count(30, 60)
FROZEN_TAKEOVER_S = 30


def _service(registry_id, rng):
    return [web_step(registry_id, command=("sh", "-c", f"sleep {rng.uniform(0, 1.5):.2f}; "
                                                      "exec httpd -f -p 8000"))]


@pytest.fixture
def pair(agents, add_node, controller_processes, busybox_image):
    """A real agent and two controller processes, one active: (agent, node id, active, standby)."""
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    first, second = controller_processes(), controller_processes()
    active, _s = wait_active([first, second], 30)
    assert active is not None, first.log[-2000:] + second.log[-2000:]
    wait_for_status(node_id, "online", timeout=30)
    return agent, node_id, active, second if active is first else first


def test_controller_killed_during_creates_and_deletes_the_standby_converges_from_the_database(
        pair, controller_processes, make_deployment, catalog, docker_client):
    agent, node_id, active, standby = pair
    rng, seed = harness.seeded("controller_kill")
    scenario = harness.Scenario("controller_kill", "SIGKILL the active controller during creates and "
                                                   "deletes", seed)
    registry_id = catalog["registry"].id
    ready, made = [], []
    audit_before = harness.last_audit_id()
    try:
        for number in range(KILLS):
            wanted = {}
            for extra in range(rng.randint(1, 3)):
                created = make_deployment(node_id, _service(registry_id, rng), name=f"c{number}-{extra}")
                made.append(created)
                wanted[created] = ("ready",)
            for victim in rng.sample(ready, k=min(len(ready), rng.randint(0, 2))):
                ready.remove(victim)
                request_delete(victim)
                wanted[victim] = ("deleted",)
            time.sleep(rng.uniform(0, 2.5))
            where = {f"dep-{i}": harness.statuses([i])[i] for i in wanted}
            active.kill()
            killed = time.monotonic()
            replacement = controller_processes()   # the killed one, started again: the new standby
            active, took = wait_active([standby, replacement], TAKEOVER_S)
            assert active is not None, f"no controller took over within {TAKEOVER_S} s"
            standby = replacement if active is standby else standby
            scenario.measure("takeover after the kill", took)
            try:
                reached, _s = harness.settle(wanted, CONVERGE_S)
                leaked, _s = harness.wait_clean(docker_client, agent.node_id, timeout=20)
                missing = harness.missing_services(docker_client, agent.node_id,
                                                   [i for i, s in reached.items() if s == "ready"])
            except AssertionError as exc:
                scenario.iteration(False)
                scenario.note(f"kill {number + 1} (at {where}): {exc}")
                raise
            took = time.monotonic() - killed
            scenario.iteration(not leaked and not missing, took)
            scenario.leaked += leaked
            ready += [i for i, s in reached.items() if s == "ready"]
            print(f"[chaos] controller_kill {number + 1}/{KILLS}: killed at {where}; "
                  f"converged in {took:.1f} s")
            assert not leaked and not missing, (leaked, missing)

        for deployment_id in made:
            request_delete(deployment_id)
        harness.settle({i: ("deleted",) for i in made}, CONVERGE_S)
        leaked, _s = harness.wait_clean(docker_client, agent.node_id, timeout=20)
        scenario.leaked += leaked
        assert not leaked and harness.live_rows(node_id) == 0, leaked
    finally:
        # A new controller links the node again: the agent replaces the link without a drop
        # the database sees, unless the takeover took longer than the heartbeat.
        scenario.link_drops = harness.link_drops(node_id, audit_before)
        scenario.save()
    assert scenario.converged == scenario.iterations == KILLS


def test_a_frozen_controller_loses_the_lock_and_the_standby_converges(
        pair, make_deployment, catalog, docker_client):
    agent, node_id, active, standby = pair
    rng, seed = harness.seeded("controller_freeze")
    scenario = harness.Scenario("controller_freeze", "SIGSTOP the active controller past the lock "
                                                     "timeout", seed)
    registry_id = catalog["registry"].id
    try:
        kept = make_deployment(node_id, _service(registry_id, rng), name="kept")
        gone = make_deployment(node_id, _service(registry_id, rng), name="gone")
        harness.settle({kept: ("ready",), gone: ("ready",)}, CONVERGE_S)
        active.freeze()
        frozen = time.monotonic()
        created = make_deployment(node_id, _service(registry_id, rng), name="while-frozen")
        request_delete(gone)
        taker, took = wait_active([standby], FROZEN_WAIT_S)
        if taker is None:
            scenario.note(f"the standby did not take over within {FROZEN_WAIT_S} s of the freeze")
        assert taker is not None, f"the standby did not take over within {FROZEN_WAIT_S} s of the freeze"
        scenario.measure("takeover after the freeze", took)
        reached, _s = harness.settle({kept: ("ready",), created: ("ready",), gone: ("deleted",)}, CONVERGE_S)
        converged_s = time.monotonic() - frozen
        # Thawed, the old leader must notice it lost the lock and stop acting, not fight the new
        # one for the agent's link.
        audit_thawed = harness.last_audit_id()
        active.thaw()
        time.sleep(8)
        drops_after_thaw = harness.link_drops(node_id, audit_thawed)
        statuses = harness.statuses([kept, created])
        leaked = harness.leaks(docker_client, agent.node_id)
        scenario.leaked += leaked
        scenario.link_drops = drops_after_thaw
        scenario.iteration(not leaked and set(statuses.values()) == {"ready"}, converged_s)
        assert took <= FROZEN_TAKEOVER_S, f"the standby took over {took:.1f} s after the freeze"
        assert reached[gone] == "deleted"
        # A deposed leader's links end as it runs again; their ends must not take the node
        # offline under the new leader (the lock fence in app/controller/state.py mark).
        assert not drops_after_thaw and statuses == {kept: "ready", created: "ready"} and not leaked, (
            f"after the thaw: {drops_after_thaw} link drops, {statuses}, "
            f"node {harness.node_status(node_id)}, leaked {leaked}")
    finally:
        active.thaw()
        scenario.save()
