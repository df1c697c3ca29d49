"""Issue 14, chaos: heavy output does not drop the controller-agent link. A service writes 1 GB of
log lines (50 MB in `make test`) and another random bytes (`head -c N /dev/urandom`: binary lines,
six bytes on the wire per byte that is not text) while the controller follows both over the link
and asks for their last 10,000 lines again and again, and a plugin step writes megabytes of
binary stderr (step.log events through the agent's outbox). Link drops are counted as the node's
moves to offline (the controller's audit entries) and as new links in the agent's log: none."""
import asyncio
import threading
import time

import pytest

from agent import protocol
from tests.chaos import harness
from tests.chaos.conftest import TOKEN, plugin_step
from tests.controller.conftest import wait_for_status, web_step

pytestmark = pytest.mark.postgres
FLOOD_BYTES = harness.count(50, 1024) * 1024 * 1024
BINARY_BYTES = harness.count(10, 100) * 1024 * 1024
DONE = "flood-done"


def _flooding(registry_id, step_id, source):
    """A service that answers on 8000 (ready) and then writes `source` to its log."""
    return web_step(registry_id, step_id, command=(
        "sh", "-c", f"httpd -f -p 8000 & sleep 1; {source}; echo; echo {DONE}; wait"))


def test_a_log_flood_and_binary_logs_do_not_drop_the_link(
        agents, add_node, controller, make_deployment, catalog, docker_client, plugin_images,
        busybox_image):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    _rng, seed = harness.seeded("log_flood")
    scenario = harness.Scenario("log_flood", f"A {FLOOD_BYTES >> 20} MB log flood and "
                                             f"{BINARY_BYTES >> 20} MB of binary logs", seed)
    registry_id = catalog["registry"].id
    audit_before = harness.last_audit_id()
    links_before = agent.log.count("is up")
    manager = active.manager
    link = manager.links[node_id]
    ws_before = link.ws
    received = {"flood": 0, "binary": 0}
    answers = []

    def call(method, params, timeout=60):
        return asyncio.run_coroutine_threadsafe(link.call(method, params, timeout=timeout),
                                                manager.loop).result(timeout + 5)

    try:
        flood = make_deployment(node_id, [
            _flooding(registry_id, "flood", f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x | fold -w 199"),
            _flooding(registry_id, "binary", f"head -c {BINARY_BYTES} /dev/urandom")], name="flood")
        noisy = make_deployment(node_id, [
            plugin_step(registry_id, "noisy", plugin_images["echo"],
                        {"stderr_lines": harness.count(2000, 20000), "line_chars": 1000})], name="noisy")
        harness.settle({flood: ("ready",)}, 120)
        started = time.monotonic()
        streams = []
        for step_id in ("flood", "binary"):
            def counted(frame, step_id=step_id):
                received[step_id] += sum(len(line) for line in frame.get("lines") or [])
            stream_id = call(protocol.LOGS_FOLLOW, {"deployment_id": f"dep-{flood}", "step_id": step_id,
                                                    "tail": 0})["stream_id"]
            manager.subscribe(node_id, stream_id, counted)
            streams.append(stream_id)
        stop = threading.Event()

        def tails():
            while not stop.is_set():
                for step_id in ("flood", "binary"):
                    begun = time.monotonic()
                    lines = call(protocol.LOGS_TAIL, {"deployment_id": f"dep-{flood}", "step_id": step_id,
                                                      "tail": 10000}, timeout=120)["lines"]
                    answers.append((step_id, len(lines), time.monotonic() - begun))
                stop.wait(1.0)

        tailer = threading.Thread(target=tails, daemon=True)
        tailer.start()
        try:
            _wait_done(docker_client, agent.node_id, flood, timeout=harness.count(300, 1800))
        finally:
            stop.set()
            tailer.join(180)
        flooded_s = time.monotonic() - started
        for stream_id in streams:
            call(protocol.LOGS_UNFOLLOW, {"stream_id": stream_id})
            manager.unsubscribe(node_id, stream_id)
        reached, _s = harness.settle({flood: ("ready",), noisy: ("ready", "failed")}, 120)

        scenario.measure("flood written", flooded_s)
        for step_id, _lines, seconds in answers:
            scenario.measure(f"logs.tail 10000 of {step_id}", seconds)
        scenario.counts.update({"bytes followed (flood)": received["flood"],
                                "bytes followed (binary)": received["binary"],
                                "tail answers": len(answers)})
        drops = harness.link_drops(node_id, audit_before)
        new_links = agent.log.count("is up") - links_before
        scenario.link_drops = max(drops, new_links)
        scenario.iteration(drops == 0 and new_links == 0 and link.ws is ws_before
                           and reached[noisy] == "ready", flooded_s)
        scenario.note(f"{FLOOD_BYTES >> 20} MB flood + {BINARY_BYTES >> 20} MB binary in {flooded_s:.0f} s; "
                      f"followed {received['flood'] >> 20} MB + {received['binary'] >> 20} MB of it, "
                      f"{len(answers)} tails; noisy plugin {reached[noisy]}")
        assert drops == 0 and new_links == 0 and link.ws is ws_before, (drops, new_links)
        assert reached[noisy] == "ready", harness.message(noisy)
        assert any(lines > 0 for _step, lines, _s in answers), answers
        assert received["flood"] > 0 and received["binary"] > 0
    finally:
        scenario.save()


def _wait_done(docker_client, node_id, deployment_id, timeout):
    """Until both flooding services logged their last line."""
    deadline = time.monotonic() + timeout
    selector = {"label": [f"org.nullops.node={node_id}", f"org.nullops.deployment=dep-{deployment_id}"]}
    while True:
        containers = docker_client.containers.list(filters=selector)
        done = [c for c in containers if DONE in c.logs(tail=2).decode(errors="replace")]
        if len(done) == 2:
            return
        assert time.monotonic() < deadline, "the flood did not finish"
        time.sleep(1)
