"""Fixtures for the agent tests: plugin images built here, executors of their own nodes.

The engine fixtures and the cleanup conventions are in tests/conftest.py and
tests/dockertools.py: everything a test creates carries `test_labels` (given to the Executor as
extra labels). Each Executor gets its own node id (`test-<uuid8>`), so the agent's own label
filters (`org.nullops.node`) never see another test's objects.
"""
import hashlib
import pathlib
import threading
import uuid

import pytest
from docker.errors import NotFound

from agent import labels as L
from agent.docker_exec import Executor
from tests.dockertools import HASH_LABEL, left_behind, remove_labelled

IMAGES_DIR = pathlib.Path(__file__).resolve().parent / "images"
PLUGINS = ("echo", "fail", "sleepy", "garbage", "flood", "oom")


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

