"""plugins/http-wait, run as the agent runs it: waits for a busybox httpd that starts late,
checks status and body, and fails at its deadline with what it saw last."""
import contextlib
import threading
import time

import pytest
from docker.errors import DockerException

from agent import labels as L
from agent.errors import PluginError
from tests.agent.executor.helpers import httpd_service

pytestmark = pytest.mark.docker


GATED_HTTPD = ('trap "exit 0" TERM; mkdir -p /www; echo ok > /www/index.html; '
               'until [ -e /tmp/go ]; do sleep 0.05; done; httpd -f -p 8080 -h /www & wait')


@pytest.fixture
def web(deployment, busybox_image):
    """busybox httpd as service "web", serving "ok" at / on port 8080."""
    deployment.service("web", busybox_image, command=httpd_service(delay_s=0),
                       readiness_check={"type": "tcp", "port": 8080})
    return deployment


def test_waits_until_the_url_answers_200_with_the_expected_body(deployment, busybox_image):
    # httpd starts only once the plugin runs and has had time for a first, failed attempt.
    web = deployment.service("web", busybox_image, command=["sh", "-c", GATED_HTTPD])
    threading.Thread(target=open_gate, args=(deployment, web), daemon=True).start()
    result = deployment.plugin("http-wait", {"url": "http://web:8080/", "body_contains": "ok",
                                             "timeout_s": 30, "interval_s": 0.2})
    assert result.output["status"] == 200
    assert result.output["attempts"] > 1
    assert "attempt 1: no answer" in result.log[1]
    assert result.log[-1].startswith("http-wait: http://web:8080/ answered status 200 after ")


def open_gate(deployment, web):
    labels = [f"{L.NODE}={deployment.executor.node_id}", f"{L.ROLE}={L.ROLE_PLUGIN}"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if deployment.executor.client.containers.list(filters={"label": labels, "status": "running"}):
            time.sleep(1.5)
            break
        time.sleep(0.05)
    with contextlib.suppress(DockerException):  # the test already failed and removed it
        web.exec_run(["touch", "/tmp/go"])


def test_another_expected_status_is_just_as_good_an_answer(web):
    missing = web.plugin("http-wait", {"url": "http://web:8080/missing", "status": [404, 410]})
    assert missing.output["status"] == 404 and missing.output["attempts"] == 1


def test_fails_at_its_deadline_against_a_closed_port(web):
    started = time.monotonic()
    with pytest.raises(PluginError) as caught:
        web.plugin("http-wait", {"url": "http://web:8081/health", "timeout_s": 2, "interval_s": 0.5})
    took = time.monotonic() - started
    assert 2 <= took < 8
    assert "http://web:8081/health did not answer 200 within 2 s" in caught.value.message
    assert "Connection refused" in caught.value.message
    assert "exited with code 1" in caught.value.message


def test_fails_at_its_deadline_when_the_body_never_matches(web):
    with pytest.raises(PluginError) as caught:
        web.plugin("http-wait", {"url": "http://web:8080/", "body_contains": "ready", "timeout_s": 2})
    assert "did not answer 200 with 'ready' in the body within 2 s" in caught.value.message
    assert "last: status 200 but the body does not contain 'ready'" in caught.value.message


def test_bad_parameters_exit_2_naming_the_parameter(deployment):
    with pytest.raises(PluginError) as caught:
        deployment.plugin("http-wait", {"url": "ftp://web/", "timeout_s": 1})
    assert "params.url must be an http:// or https:// URL" in caught.value.message
    assert "exited with code 2" in caught.value.message
