"""Issue 6's "done means": the real controller, a real agent, real containers and a real Caddy.
A deployment's URL answers through Caddy within a second of it being ready; the node's agent
killed gives the offline page, restarted the service again; a delete gives the 404 page; a
restarted controller rebuilds the route table; a route NullOps did not create survives it all."""
import time

import pytest

from app.services import deployments
from tests.controller.test_deployments import TOKEN

from .conftest import deployment_row, wait_for_deployment, wait_for_status, web_step

pytestmark = pytest.mark.docker

WEB = ["sh", "-c", "mkdir -p /www && echo hello-from-the-deployment > /www/index.html && "
       "exec httpd -f -p 8000 -h /www"]


def through_caddy(caddy, host, want, timeout=30.0):
    """Poll until a request through Caddy answers `want` (status); returns (status, body, seconds)."""
    started = time.monotonic()
    while True:
        status, body = caddy.get(host, timeout=2)
        if status == want:
            return status, body, time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{host}: {status} {body[:300]}"
        time.sleep(0.02)


@pytest.fixture
def ingress_config(app, caddy, web, monkeypatch):
    monkeypatch.setitem(app.config, "NULLOPS_CADDY_ADMIN_URL", caddy.admin_url)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_LISTEN", caddy.listen)
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_PAGES_UPSTREAM", web)


def test_urls_follow_the_deployment_through_caddy(ingress_config, caddy, agents, add_node, controller,
                                                   make_deployment, catalog, busybox_image):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=WEB)], name="pr-7")
    environment = catalog["environment"]
    base = f"pr-7.{environment.name}.{environment.base_domain}"
    host = f"web.{base}"

    assert through_caddy(caddy, host, 503)[1].count("pr-7")   # not ready yet: a page says so
    wait_for_deployment(deployment_id, "ready")
    _status, body, seconds = through_caddy(caddy, host, 200)
    assert body.strip() == "hello-from-the-deployment"
    assert seconds < 1.0, f"routable {seconds:.2f} s after the database said ready"
    landing = caddy.get(base)
    # Its link to the service is the URL people open: with the port Caddy listens on.
    assert landing[0] == 200 and f'href="http://{host}:{caddy.http_port}"' in landing[1]
    assert "ready" in landing[1]

    agent.proc.kill()                                          # the node goes away
    _status, body, _s = through_caddy(caddy, host, 503)
    assert "offline" in body and "since" in body
    agent = agents.restart(agent, TOKEN)
    wait_for_deployment(deployment_id, "ready")
    assert through_caddy(caddy, host, 200)[1].strip() == "hello-from-the-deployment"

    active.stop()                                              # a new controller rebuilds it all
    caddy.stop()
    caddy.start()                                              # Caddy restarted empty, too
    controller()
    assert through_caddy(caddy, host, 200)[1].strip() == "hello-from-the-deployment"

    deployments.request_delete(None, deployment_row(deployment_id), "test")
    _status, body, _s = through_caddy(caddy, host, 404)
    assert "No deployment answers at this address" in body
    wait_for_deployment(deployment_id, "deleted")
    assert caddy.get(base)[0] == 404


def test_a_route_nullops_did_not_create_survives_syncs(ingress_config, caddy, agents, add_node,
                                                       controller, make_deployment, catalog,
                                                       busybox_image):
    agent = agents.start(TOKEN)
    node_id = add_node(agent.port_number, TOKEN)
    active = controller()
    wait_for_status(node_id, "online")
    deployment_id = make_deployment(node_id, [web_step(catalog["registry"].id, command=WEB)], name="pr-8")
    host = f"web.pr-8.{catalog['environment'].name}.{catalog['environment'].base_domain}"
    wait_for_deployment(deployment_id, "ready")
    through_caddy(caddy, host, 200)
    caddy.add_foreign_route()
    active.stop()
    controller()                                               # full sync by a new controller
    deployments.request_delete(None, deployment_row(deployment_id), "test")
    through_caddy(caddy, host, 404)
    assert caddy.get("status.example.test") == (200, "operator ok")
