"""Helpers for tests on a real Docker engine (fixtures using them are in tests/conftest.py).

Every container, network and volume a test creates carries `org.nullops.test=<uuid>` and an
owner label, so it is found and removed by label: at the start of a test (what earlier, killed
runs left behind) and at its end (the test's own things), after which nothing may be left.

NULLOPS_TEST_DOCKER=1 (set by `make test`) makes an unreachable engine or a missing test image
an error; without it those tests are skipped. Images come from scripts/build-test-images.sh
(no registry is reachable, nothing is pulled).
"""
import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from docker.errors import APIError, NotFound

LABEL = "org.nullops.test"
# Who created a resource ("<hostname>:<pid>"), so the start-of-test cleanup does not remove
# what a concurrent pytest process (another terminal) is still using.
OWNER_LABEL = "org.nullops.test.owner"
# Input hashes of locally built images; not under org.nullops.test: containers inherit labels.
HASH_LABEL = "org.nullops.build.inputs-sha256"
BASE_IMAGE = "nullops-test/base:bookworm"
BUSYBOX_IMAGE = "nullops-test/busybox:latest"


def unavailable(message):
    """Fail when the run asked for Docker (NULLOPS_TEST_DOCKER=1), skip otherwise."""
    if os.environ.get("NULLOPS_TEST_DOCKER", "") not in ("", "0"):
        pytest.fail(f"NULLOPS_TEST_DOCKER is set but {message}", pytrace=False)
    pytest.skip(f"{message} (set NULLOPS_TEST_DOCKER=1 to make this an error)")


def require_image(client, name):
    try:
        client.images.get(name)
    except NotFound:
        unavailable(f"test image {name} is missing; run scripts/build-test-images.sh")
    return name


def owner_labels():
    return {OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"}


def _owned_by_live_other_process(labels):
    host, _, pid = (labels or {}).get(OWNER_LABEL, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return process_alive(int(pid))


def process_alive(pid):
    """Whether process `pid` runs on this host (a test run that owns something)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def labelled(client, selector):
    """(containers, networks, volumes) matching a label filter (str or list, ANDed)."""
    filters = {"label": selector}
    # ignore_removed: the SDK inspects each listed container, and one another process removes
    # meanwhile would fail the listing with NotFound (seen when runs overlap).
    return (client.containers.list(all=True, filters=filters, ignore_removed=True),
            client.networks.list(filters=filters),
            client.volumes.list(filters=filters))


def remove_labelled(client, selector, spare_live_owners=False):
    containers, networks, volumes = labelled(client, selector)
    # Containers first: a network or volume in use cannot be removed.
    for container in containers:
        if not (spare_live_owners and _owned_by_live_other_process(container.labels)):
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
    for network in networks:
        if not (spare_live_owners and _owned_by_live_other_process(network.attrs.get("Labels"))):
            try:
                network.remove()
            except NotFound:
                pass
    for volume in volumes:
        if not (spare_live_owners and _owned_by_live_other_process(volume.attrs.get("Labels"))):
            try:
                volume.remove(force=True)
            except (NotFound, APIError):  # APIError: in use by a container spared above
                pass


def left_behind(client, selector):
    return [f"{kind} {getattr(obj, 'name', None) or obj.id}"
            for kind, objs in zip(("container", "network", "volume"), labelled(client, selector), strict=True)
            for obj in objs]


@contextlib.contextmanager
def htpasswd_registry(folder, user, password):
    """A real registry (Debian's docker-registry) with basic auth on a free loopback port;
    yields "127.0.0.1:<port>". `make test` installs it; a bare pytest run without it skips."""
    if not (shutil.which("docker-registry") and shutil.which("htpasswd")):
        message = "docker-registry or htpasswd missing (apt-get install docker-registry apache2-utils)"
        if os.environ.get("NULLOPS_TEST_DOCKER") == "1":  # make test installs them: a miss fails
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = Path(folder)
    htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True).stdout
    (folder / "htpasswd").write_bytes(htpasswd)
    (folder / "config.yml").write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: test\n    path: {folder / 'htpasswd'}\n")
    with open(folder / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "registry did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
