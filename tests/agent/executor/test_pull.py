"""Image pulls: a no-op when the image is present; failures say which of not found, denied or
unreachable it was. Uses a real registry (Debian's docker-registry) on loopback with basic
auth; `make test` installs it, a bare pytest run without it skips."""
import time

import pytest
from docker.errors import ImageNotFound

from agent.errors import ImageError
from tests.dockertools import htpasswd_registry

from .helpers import free_port

pytestmark = pytest.mark.docker

USER, PASSWORD = "agent", "pull-secret-123"


@pytest.fixture
def registry(tmp_path):
    with htpasswd_registry(tmp_path, USER, PASSWORD) as address:
        yield address


def _remove_image(client, name):
    try:
        client.images.remove(name, force=True)
    except ImageNotFound:
        pass


def test_pull_maps_registry_answers_to_image_errors(docker_client, executor, busybox_image, registry):
    image = f"{registry}/nullops-test/pulled:1"
    auth = {"username": USER, "password": PASSWORD}
    docker_client.images.get(busybox_image).tag(image)
    try:
        for item in docker_client.api.push(image, stream=True, decode=True, auth_config=auth):
            assert "error" not in item, item  # push errors arrive in the stream
        _remove_image(docker_client, image)

        cases = [
            (image, None, "pull_denied"),                                        # no credentials
            (image, {"username": USER, "password": "wrong"}, "pull_denied"),     # bad password
            (f"{registry}/nullops-test/pulled:2", auth, "image_not_found"),      # no such tag
            (f"{registry}/nullops-test/nothing:1", auth, "image_not_found"),     # no such repository
            (f"127.0.0.1:{free_port()}/nullops-test/pulled:1", auth, "pull_failed"),  # unreachable
        ]
        for name, credentials, code in cases:
            with pytest.raises(ImageError) as caught:
                executor.pull(name, auth=credentials)
            assert caught.value.code == code, (name, caught.value.message)
            assert name in caught.value.message
            assert PASSWORD not in caught.value.message

        executor.pull(image, auth=auth)
        assert docker_client.images.get(image).id == docker_client.images.get(busybox_image).id
        # Present now: no registry call at all (no credentials, and it would refuse them).
        executor.pull(image)
    finally:
        _remove_image(docker_client, image)


def test_pull_of_a_present_image_is_a_no_op(executor, busybox_image):
    started = time.monotonic()
    executor.pull(busybox_image)  # no registry is reachable here: this must not try one
    assert time.monotonic() - started < 1
