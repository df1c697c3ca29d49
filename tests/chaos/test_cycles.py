"""Issue 14, chaos: create/delete cycles (5 in `make test`, 100 in `make chaos`), each mixing a run
that ends ready, one that fails (rolled back by the agent) and one cancelled while it runs (a
delete during its plugin step), with the ingress on a real Caddy. Afterwards: zero containers,
networks or volumes labelled with the node, zero routes in Caddy, zero live deployment rows,
nothing in the agent's own record."""
import time

import pytest

from tests.chaos import harness
from tests.chaos.conftest import TOKEN, failing, request_delete, routes, slow
from tests.controller.conftest import wait_for_status, web_step

pytestmark = pytest.mark.postgres
CYCLES = harness.count(5, 100)
CYCLE_S = 120


def test_create_delete_cycles_of_ready_failed_and_cancelled_runs_leak_nothing(
        ingress, agents, add_node, controller, make_deployment, catalog, docker_client, plugin_images):
    caddy = ingress
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    rng, seed = harness.seeded("cycles")
    scenario = harness.Scenario("cycles", "Create/delete cycles mixing ready, failed and cancelled runs",
                                seed)
    registry_id = catalog["registry"].id
    audit_before = harness.last_audit_id()
    try:
        for number in range(CYCLES):
            started = time.monotonic()
            kinds = {"ready": make_deployment(node_id, [web_step(registry_id)], name=f"r{number}"),
                     "failed": make_deployment(node_id, failing(registry_id), name=f"f{number}"),
                     "cancelled": make_deployment(node_id, slow(registry_id, plugin_images["sleepy"]),
                                                  name=f"c{number}")}
            try:
                # Cancelled at a random moment of its run: before, in or after its first step.
                time.sleep(rng.uniform(0, 2.0))
                request_delete(kinds["cancelled"])
                harness.settle({kinds["ready"]: ("ready",), kinds["failed"]: ("failed",),
                                kinds["cancelled"]: ("deleted",)}, CYCLE_S)
                for kind in ("ready", "failed"):
                    request_delete(kinds[kind])
                harness.settle({i: ("deleted",) for i in kinds.values()}, CYCLE_S)
            except AssertionError as exc:
                scenario.iteration(False)
                scenario.note(f"cycle {number + 1}: {exc}")
                raise
            took = time.monotonic() - started
            leaked = harness.leaks(docker_client, agent.node_id)
            scenario.leaked += leaked
            scenario.iteration(not leaked, took)
            assert not leaked, f"cycle {number + 1} left {leaked}"
            if (number + 1) % 10 == 0 or number + 1 == CYCLES:
                print(f"[chaos] cycles {number + 1}/{CYCLES}: last took {took:.1f} s")

        left = {
            "objects": harness.labelled(docker_client, agent.node_id),
            "routes": _eventually(lambda: routes(caddy), 10),
            "live rows": harness.live_rows(node_id),
            "agent records": _eventually(lambda: harness.agent_store(agent.data_dir), 10),
        }
        scenario.leaked += [f"{what}: {found}" for what, found in left.items() if found]
        scenario.counts.update({f"left {what}": len(found) if not isinstance(found, int) else found
                                for what, found in left.items()})
        assert not any(left.values()), left
    finally:
        scenario.link_drops = harness.link_drops(node_id, audit_before)
        scenario.save()
    assert scenario.link_drops == 0
    assert scenario.converged == scenario.iterations == CYCLES


def _eventually(read, timeout):
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
