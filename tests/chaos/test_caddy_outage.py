"""Issue 14, chaos: Caddy stopped for 30 s (5 s in `make test`) while deployments are created and
deleted, then started again with the configuration it saved before it went away (`caddy run
--resume`: the deleted deployment's route is still in it, the new one's is not). Within seconds
of its return every route is right: the new deployment answers through Caddy, the deleted one
gets the 404 page, the one that stayed answers throughout."""
import time

import pytest

from tests.chaos import harness
from tests.chaos.conftest import TOKEN, request_delete, routes
from tests.controller.conftest import wait_for_status, web_step

pytestmark = pytest.mark.postgres
OUTAGES = harness.count(1, 3)
OUTAGE_S = harness.count(5, 30)
ROUTES_WITHIN_S = 5.0
WEB = ["sh", "-c", "mkdir -p /www && echo \"hello from $NAME\" > /www/index.html && "
       "exec httpd -f -p 8000 -h /www"]


def test_caddy_stopped_under_changes_routes_right_within_seconds_of_its_return(
        ingress, agents, add_node, controller, make_deployment, catalog, docker_client, busybox_image):
    caddy = ingress
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    controller()
    wait_for_status(node_id, "online")
    rng, seed = harness.seeded("caddy_outage")
    scenario = harness.Scenario("caddy_outage", "Stop Caddy under changes", seed)
    environment = catalog["environment"]
    registry_id = catalog["registry"].id

    def host(name):
        return f"web.{name}.{environment.name}.{environment.base_domain}"

    def deploy(name):
        return make_deployment(node_id, [web_step(registry_id, command=WEB, env={"NAME": name})], name=name)

    def answers():
        return {name: caddy.get(host(name), timeout=2) for name in expected}

    def right(now):
        return all(now[name][0] == status and (status != 200 or f"hello from {name}" in now[name][1])
                   for name, status in expected.items())

    try:
        stays = deploy("stays")
        live = {"stays": stays}
        expected = {"stays": 200}
        for number in range(OUTAGES):
            doomed_name = f"doomed{number}"
            live[doomed_name] = deploy(doomed_name)
            harness.settle({i: ("ready",) for i in live.values()}, 60)
            expected[doomed_name] = 200
            _until(lambda: right(answers()), 30, "routes before the outage")

            caddy.stop()
            stopped = time.monotonic()
            request_delete(live.pop(doomed_name))
            newcomer = f"new{number}"
            live[newcomer] = deploy(newcomer)
            harness.settle({i: ("ready",) for i in live.values()}, 60)
            expected[doomed_name], expected[newcomer] = 404, 200
            time.sleep(max(0.0, OUTAGE_S + rng.uniform(-1, 1) - (time.monotonic() - stopped)))

            caddy.start(resume=True)
            back = time.monotonic()
            took = _until(lambda: right(answers()), 60, "routes after Caddy's return")
            scenario.measure("routes right after Caddy's return", took)
            scenario.measure("outage", back - stopped)
            scenario.iteration(took <= ROUTES_WITHIN_S, took)
            scenario.note(f"outage {back - stopped:.1f} s: routes right {took:.2f} s after Caddy's return")
            del expected[doomed_name]
        stale = sorted(set(routes(caddy)) - {host(name) for name in live})
        scenario.leaked += [f"route {h}" for h in stale]
        assert not stale, f"routes of deleted deployments left in Caddy: {stale}"
    finally:
        scenario.save()
    worst = max(scenario.measures["routes right after Caddy's return"])
    assert worst <= ROUTES_WITHIN_S, f"routes right only {worst:.1f} s after Caddy's return"


def _until(check, timeout, what):
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not right after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started
