"""Fixtures for tests that drive a real Docker engine.

Every container/network/volume a test creates carries `test_labels`
(`org.nullops.test=<uuid>`), so it can be found and removed by label: at the start of a
test (whatever earlier, killed runs left behind) and at its end (this test's own things).

NULLOPS_TEST_DOCKER=1 (set by `make test`) makes an unreachable engine or a missing test
image an error; without it those tests are skipped. Images come from
scripts/build-test-images.sh (no registry is reachable, nothing is pulled).
"""

import os
import socket
import uuid

import docker
import pytest
import requests
from docker.errors import APIError, DockerException, NotFound

LABEL = "org.nullops.test"
# Who created a resource ("<hostname>:<pid>"), so the start-of-test cleanup does not
# remove what a concurrent pytest process (another worker or terminal) is still using.
OWNER_LABEL = "org.nullops.test.owner"

BASE_IMAGE = "nullops-test/base:bookworm"
BUSYBOX_IMAGE = "nullops-test/busybox:latest"


def pytest_configure(config):
    # Also declared in pyproject.toml; repeated so this folder runs on its own.
    config.addinivalue_line("markers", "docker: needs a real Docker engine")


def _docker_required():
    return os.environ.get("NULLOPS_TEST_DOCKER", "") not in ("", "0")


def _unavailable(message):
    """Fail when the run asked for Docker (NULLOPS_TEST_DOCKER=1), skip otherwise."""
    if _docker_required():
        pytest.fail(f"NULLOPS_TEST_DOCKER is set but {message}", pytrace=False)
    pytest.skip(f"{message} (set NULLOPS_TEST_DOCKER=1 to make this an error)")


@pytest.fixture(scope="session")
def docker_client():
    try:
        # Negotiates the API version (the engine here speaks 1.41; pinning newer fails).
        client = docker.from_env(timeout=60)
        client.ping()
    except (DockerException, requests.RequestException, OSError) as exc:
        _unavailable(f"the Docker engine is unreachable ({exc}); run scripts/test-host.sh")
    try:
        yield client
    finally:
        client.close()


def _require_image(client, name):
    try:
        client.images.get(name)
    except NotFound:
        _unavailable(f"test image {name} is missing; run scripts/build-test-images.sh")
    return name


@pytest.fixture(scope="session")
def base_image(docker_client):
    return _require_image(docker_client, BASE_IMAGE)


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    return _require_image(docker_client, BUSYBOX_IMAGE)


def _owned_by_live_other_process(labels):
    host, _, pid = (labels or {}).get(OWNER_LABEL, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _labelled(client, selector):
    """Containers, networks and volumes matching a label filter ("key" or "key=value")."""
    filters = {"label": selector}
    return (
        client.containers.list(all=True, filters=filters),
        client.networks.list(filters=filters),
        client.volumes.list(filters=filters),
    )


def _remove_labelled(client, selector, spare_live_owners=False):
    containers, networks, volumes = _labelled(client, selector)
    # Containers first: a network or volume in use cannot be removed.
    for container in containers:
        if spare_live_owners and _owned_by_live_other_process(container.labels):
            continue
        try:
            container.remove(force=True, v=True)
        except NotFound:
            pass
    for network in networks:
        if spare_live_owners and _owned_by_live_other_process(network.attrs.get("Labels")):
            continue
        try:
            network.remove()
        except NotFound:
            pass
    for volume in volumes:
        if spare_live_owners and _owned_by_live_other_process(volume.attrs.get("Labels")):
            continue
        try:
            volume.remove(force=True)
        except (NotFound, APIError):
            # APIError: still in use by a container we spared above.
            pass


@pytest.fixture
def test_labels(docker_client):
    """Labels to put on everything the test creates; removed again after the test."""
    test_id = uuid.uuid4().hex
    labels = {LABEL: test_id, OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"}
    # Leftovers of earlier runs that were killed before their teardown (containers survive
    # an engine restart, and a crashed run can leave duplicate-named networks behind).
    _remove_labelled(docker_client, LABEL, spare_live_owners=True)
    selector = f"{LABEL}={test_id}"
    try:
        yield labels
    finally:
        _remove_labelled(docker_client, selector)
    left = [
        f"{kind} {getattr(obj, 'name', None) or obj.id}"
        for kind, objs in zip(
            ("container", "network", "volume"), _labelled(docker_client, selector), strict=True
        )
        for obj in objs
    ]
    assert not left, f"left behind after cleanup: {left}"
