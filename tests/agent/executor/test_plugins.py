"""Plugin steps: JSON in on stdin, a JSON object out on stdout, stderr as the step's log; every
way a plugin can go wrong maps to its error code, and no plugin container is ever left."""
import glob
import json
import os
import threading
import time
import tracemalloc

import pytest

from agent import labels as L
from agent.errors import Cancelled, ImageError, PluginError
from agent.plugins import MAX_LINE_CHARS, MAX_LOG_LINES, run_plugin

from .helpers import dep_id, free_port, idle_service, plugin, service, spec_for, tcp_service

pytestmark = pytest.mark.docker

SECRET = "postgres://app:Sup3r-s3cret-pw@db:5432/app"


def run(executor, image, cancel, params=None, secrets=None, **fields):
    spec = spec_for(fields.pop("deployment_id", None) or dep_id(), plugin("step1", image, **fields))
    payload = {"action": "run", "params": params or {}, "secrets": secrets or {}, "outputs": {},
               "services": {}, "deployment": {"id": spec["deployment_id"]}}
    try:
        return run_plugin(executor, spec, spec["steps"][0], payload, run_id="run-1", cancel=cancel)
    finally:
        # Whatever happened, the plugin's container is gone when run_plugin returns.
        left = executor.client.containers.list(all=True, filters={"label": [
            f"{L.NODE}={executor.node_id}", f"{L.ROLE}={L.ROLE_PLUGIN}"]})
        assert left == [], f"plugin containers left: {[c.name for c in left]}"


def fails(executor, image, cancel, code, **kwargs):
    started = time.monotonic()
    with pytest.raises(PluginError) as caught:
        run(executor, image, cancel, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value, time.monotonic() - started


def test_success_returns_the_output_object_and_stderr_as_log(executor, plugin_images, cancel):
    params = {"n": 1, "big": "x" * 300_000}  # several socket writes each way
    result = run(executor, plugin_images["echo"], cancel, params=params, secrets={"DB": "pw-123456"})
    assert result.output == {"echo": {"action": "run", "params": params, "secrets": {"DB": "pw-123456"},
                                      "outputs": {}, "services": {},
                                      "deployment": {"id": result.output["echo"]["deployment"]["id"]}}}
    assert len(result.log) == 1 and result.log[0].startswith("echo plugin: action run,")


def test_non_zero_exit_is_plugin_failed_with_the_last_stderr_lines(executor, plugin_images, cancel):
    error, _ = fails(executor, plugin_images["fail"], cancel, "plugin_failed")
    assert "exited with code 3" in error.message
    assert "the database refused the connection" in error.message
    assert error.log == ["fail plugin: starting", "fail plugin: the database refused the connection"]


def test_timeout_kills_the_plugin(executor, plugin_images, cancel):
    error, took = fails(executor, plugin_images["sleepy"], cancel, "plugin_timeout", timeout_s=1)
    assert "within 1 s" in error.message
    assert error.log == ["sleepy plugin: going to sleep"]
    assert took < 4


@pytest.mark.parametrize("mode", ["text", "list"])
def test_output_that_is_not_a_json_object_is_bad_output(executor, plugin_images, cancel, mode):
    error, _ = fails(executor, plugin_images["garbage"], cancel, "plugin_bad_output", params={"mode": mode})
    shown = error.message.split("it wrote ", 1)[1]
    if mode == "list":
        assert shown == "'[1, 2, 3]'"
    else:  # 1,000 characters came; at most 200 are shown
        assert shown.startswith("'this is not JSON at all; ") and shown.endswith(" ...")
        assert len(shown) <= 200 + len("'' ...")


def test_fifty_megabytes_of_output_is_too_large_and_never_held_in_memory(executor, plugin_images, cancel):
    tracemalloc.start()
    try:
        error, took = fails(executor, plugin_images["flood"], cancel, "plugin_output_too_large")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"\nflood: stopped after {took:.2f} s, peak Python allocation {peak / 1e6:.1f} MB")
    assert "more than 1048576 bytes" in error.message
    assert peak < 8 * 1024 * 1024
    assert took < 10


def test_max_output_bytes_of_the_step_is_the_cap(executor, plugin_images, cancel):
    fails(executor, plugin_images["echo"], cancel, "plugin_output_too_large", params={"pad": "y" * 5000},
          max_output_bytes=4096)


def test_out_of_memory_is_plugin_crashed(executor, plugin_images, cancel):
    error, _ = fails(executor, plugin_images["oom"], cancel, "plugin_crashed", memory_mb=32)
    assert "out of memory" in error.message and "32 MB" in error.message


def test_missing_image_is_an_image_error_and_creates_nothing(executor, cancel):
    # A registry on a closed loopback port: nothing leaves the machine.
    image = f"127.0.0.1:{free_port()}/nullops-test/no-such-plugin:1"
    with pytest.raises(ImageError) as caught:
        run(executor, image, cancel)
    assert caught.value.code == "pull_failed" and image in caught.value.message
    assert executor.deployment_ids() == set()


def test_cancel_kills_the_plugin_promptly(executor, plugin_images, cancel):
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run(executor, plugin_images["sleepy"], cancel)
    assert time.monotonic() - started < 2.5


def test_log_lines_are_capped_in_number_and_length(executor, plugin_images, cancel):
    result = run(executor, plugin_images["echo"], cancel, params={"stderr_lines": 2500, "long_line": 10_000})
    assert len(result.log) == MAX_LOG_LINES + 1
    assert result.log[0] == "[502 earlier log lines dropped; the last 2000 are kept]"
    assert result.log[-2] == "line 2499"
    assert len(result.log[-1]) == MAX_LINE_CHARS and result.log[-1].endswith("[line truncated]")


def test_network_only_when_the_step_asks_for_it(executor, plugin_images, base_image, cancel):
    deployment = dep_id()
    spec = spec_for(deployment, service("db", base_image, ports=[9000]))
    executor.start_service(spec, spec["steps"][0], {}, tcp_service(0), "run-1")
    probe = {"probe": ["db", 9000]}
    joined = run(executor, plugin_images["echo"], cancel, params=probe, network=True,
                 deployment_id=deployment)
    alone = run(executor, plugin_images["echo"], cancel, params=probe, deployment_id=deployment)
    assert joined.output["probe"] == "connected"
    assert alone.output["probe"].startswith("failed")


def test_secrets_in_the_input_reach_neither_inspect_nor_docker_logs(docker_client, executor, plugin_images,
                                                                   busybox_image, cancel):
    deployment = dep_id()
    root = docker_client.info()["DockerRootDir"]
    seen = {}

    def files_holding_secret(pattern):
        found = []
        for path in glob.glob(os.path.join(root, "containers", *pattern)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    if SECRET.encode() in f.read():
                        found.append(path)
        return found

    def inspect_while_running():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            running = docker_client.containers.list(filters={"label": [
                f"{L.NODE}={executor.node_id}", f"{L.ROLE}={L.ROLE_PLUGIN}"]})
            if running:
                time.sleep(0.5)  # the plugin has read its input and leaked it on stderr by now
                seen["attrs"] = docker_client.api.inspect_container(running[0].id)
                # The plugin's own files on the node (config.v2.json, hostconfig.json, ...),
                # and every container's json-file log.
                seen["files"] = files_holding_secret([running[0].id, "*"]) + files_holding_secret(
                    ["*", "*-json.log*"])
            time.sleep(0.02)

    watcher = threading.Thread(target=inspect_while_running)
    watcher.start()
    result = run(executor, plugin_images["echo"], cancel, params={"sleep": 1, "leak_secrets": True},
                 secrets={"DATABASE_URL": SECRET}, deployment_id=deployment)
    watcher.join()

    assert result.output["echo"]["secrets"] == {"DATABASE_URL": SECRET}
    # The plugin printed the secret on stderr: the step's log has it redacted.
    assert result.log[-1] == "secrets: [redacted]"
    # While it ran, the container held the secret nowhere Docker shows, and logged nothing.
    attrs = seen["attrs"]
    assert SECRET not in json.dumps(attrs)
    assert seen["files"] == []
    assert attrs["HostConfig"]["LogConfig"]["Type"] == "none" and attrs["LogPath"] == ""
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    host = attrs["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 256 * 1024 * 1024)  # plugin defaults
    labels = attrs["Config"]["Labels"]
    assert (labels[L.ROLE], labels[L.STEP], labels[L.RUN], labels[L.DEPLOYMENT]) == (
        "plugin", "step1", "run-1", deployment)

    # Nothing left of this node holds it either, and no Docker log file on the node does.
    spec = spec_for(deployment, service("api", busybox_image))
    executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1")  # something left
    node_filter = {"label": f"{L.NODE}={executor.node_id}"}
    for container in docker_client.containers.list(all=True, filters=node_filter):
        assert SECRET not in json.dumps(docker_client.api.inspect_container(container.id))
    for network in docker_client.networks.list(filters=node_filter):
        assert SECRET not in json.dumps(docker_client.api.inspect_network(network.id))
    assert files_holding_secret(["*", "*"]) == []
