"""Fixtures for the agent tests on Docker: a real engine, real images built here.

Conventions of tests/docker/conftest.py: everything a test creates carries
`org.nullops.test=<uuid>` and an owner label (given to the Executor as extra labels), and is
removed by label at the start of a test (leftovers of killed runs) and at its end, after which
nothing with the test's labels may be left. Each Executor gets its own node id (`test-<uuid8>`),
so the agent's own label filters (`org.nullops.node`) never see another test's objects.

NULLOPS_TEST_DOCKER=1 makes an unreachable engine or a missing base image an error.
"""
import hashlib
import os
import pathlib
import socket
import threading
import uuid

import docker
import pytest
import requests
from docker.errors import APIError, DockerException, NotFound

from agent import labels as L
from agent.docker_exec import Executor

LABEL = "org.nullops.test"
OWNER_LABEL = "org.nullops.test.owner"
HASH_LABEL = "org.nullops.build.inputs-sha256"  # not org.nullops.test: containers inherit it
BASE_IMAGE = "nullops-test/base:bookworm"
BUSYBOX_IMAGE = "nullops-test/busybox:latest"
IMAGES_DIR = pathlib.Path(__file__).resolve().parent / "images"
PLUGINS = ("echo", "fail", "sleepy", "garbage", "flood", "oom")


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a real Docker engine")


def _unavailable(message):
    if os.environ.get("NULLOPS_TEST_DOCKER", "") not in ("", "0"):
        pytest.fail(f"NULLOPS_TEST_DOCKER is set but {message}", pytrace=False)
    pytest.skip(f"{message} (set NULLOPS_TEST_DOCKER=1 to make this an error)")


@pytest.fixture(scope="session")
def docker_client():
    try:
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
        return client.images.get(name)
    except NotFound:
        _unavailable(f"test image {name} is missing; run scripts/build-test-images.sh")


@pytest.fixture(scope="session")
def base_image(docker_client):
    _require_image(docker_client, BASE_IMAGE)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    _require_image(docker_client, BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


def _inputs_hash(folder, base_id):
    digest = hashlib.sha256(base_id.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_image(client, name, base_image):
    """nullops-test/agent-<name>:latest from tests/agent/images/<name>, rebuilt only when its
    inputs (files, base image id) changed."""
    folder = IMAGES_DIR / name
    tag = f"nullops-test/agent-{name}:latest"
    inputs = _inputs_hash(folder, client.images.get(base_image).id)
    try:
        if client.images.get(tag).labels.get(HASH_LABEL) == inputs:
            return tag
    except NotFound:
        pass
    client.images.build(path=str(folder), tag=tag, buildargs={"BASE_IMAGE": base_image},
                        labels={HASH_LABEL: inputs}, forcerm=True, rm=True, pull=False)
    return tag


@pytest.fixture(scope="session")
def plugin_images(docker_client, base_image):
    """{name: image tag} of the test plugins; built in parallel the first time."""
    images, errors = {}, []

    def build(name):
        try:
            images[name] = build_image(docker_client, name, base_image)
        except Exception as exc:  # reported below, with the image's name
            errors.append(f"{name}: {exc}")

    threads = [threading.Thread(target=build, args=(name,)) for name in PLUGINS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"building test plugin images failed: {errors}"
    return images


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


def labelled(client, selector):
    """(containers, networks, volumes) matching a label filter (str or list, ANDed)."""
    filters = {"label": selector}
    return (client.containers.list(all=True, filters=filters), client.networks.list(filters=filters),
            client.volumes.list(filters=filters))


def remove_labelled(client, selector, spare_live_owners=False):
    containers, networks, volumes = labelled(client, selector)
    for obj in containers:
        if not (spare_live_owners and _owned_by_live_other_process(obj.labels)):
            try:
                obj.remove(force=True, v=True)
            except NotFound:
                pass
    for obj in networks:
        if not (spare_live_owners and _owned_by_live_other_process(obj.attrs.get("Labels"))):
            try:
                obj.remove()
            except NotFound:
                pass
    for obj in volumes:
        if not (spare_live_owners and _owned_by_live_other_process(obj.attrs.get("Labels"))):
            try:
                obj.remove(force=True)
            except (NotFound, APIError):
                pass


def left_behind(client, selector):
    return [f"{kind} {getattr(obj, 'name', None) or obj.id}"
            for kind, objs in zip(("container", "network", "volume"), labelled(client, selector), strict=True)
            for obj in objs]


@pytest.fixture
def test_labels(docker_client):
    test_id = uuid.uuid4().hex
    labels = {LABEL: test_id, OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"}
    remove_labelled(docker_client, LABEL, spare_live_owners=True)
    selector = f"{LABEL}={test_id}"
    try:
        yield labels
    finally:
        remove_labelled(docker_client, selector)
    left = left_behind(docker_client, selector)
    assert not left, f"left behind after cleanup: {left}"


@pytest.fixture
def make_executor(docker_client, test_labels):
    """Executor factory: each one is a node of its own (`test-<uuid8>`)."""
    nodes = []

    def make(**kwargs):
        node_id = kwargs.pop("node_id", None) or f"test-{uuid.uuid4().hex[:8]}"
        nodes.append(node_id)
        return Executor(docker_client, node_id, labels=test_labels, **kwargs)

    try:
        yield make
    finally:
        for node_id in nodes:  # anything of the node, even if it lacked the test label
            remove_labelled(docker_client, f"{L.NODE}={node_id}")
    for node_id in nodes:
        left = left_behind(docker_client, f"{L.NODE}={node_id}")
        assert not left, f"node {node_id} left behind: {left}"


@pytest.fixture
def executor(make_executor):
    # Services bind published ports to loopback only (tests talk to 127.0.0.0/8 alone).
    return make_executor(publish_host="127.0.0.1")


@pytest.fixture
def cancel():
    return threading.Event()

