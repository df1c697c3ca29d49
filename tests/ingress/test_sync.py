"""The ingress sync against a real Caddy and the web tier's page view over HTTP, with
deployment rows written directly and a plain HTTP server on loopback standing in for a
published container port (the path through a real agent is in test_ingress_e2e.py)."""
import asyncio
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.extensions import db
from app.ingress import caddy as caddy_api
from app.ingress.sync import IngressSync
from app.models import Deployment, Environment, Node, PipelineVersion, Project
from app.states import move_deployment, move_node

RESOLVED = {"steps": [
    {"id": "web", "kind": "service", "registry_id": 1, "image": "shop/web", "tag_mode": "pinned",
     "tag": "1", "ports": [8000], "exposed_ports": [8000], "depends_on": []},
    {"id": "db", "kind": "service", "registry_id": 1, "image": "shop/db", "tag_mode": "pinned",
     "tag": "1", "ports": [5432], "exposed_ports": [], "depends_on": []},
]}


@pytest.fixture
def upstream():
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"hello from web"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()


@pytest.fixture
def deployment(app, upstream):
    environment = Environment(name="staging", base_domain="ingress.test")
    project = Project(name="shop")
    db.session.add_all([environment, project])
    db.session.flush()
    node = Node(environment_id=environment.id, name="node-1", host="127.0.0.1", status="online")
    version = PipelineVersion(project_id=project.id, number=1, definition={}, resolved=RESOLVED)
    db.session.add_all([node, version])
    db.session.flush()
    row = Deployment(name="pr-1", project_id=project.id, environment_id=environment.id,
                     node_id=node.id, pipeline_version_id=version.id, tags={}, cpus=0.5,
                     memory_mb=128, status="ready",
                     published={"web": {"ports": {"8000": upstream}}})
    db.session.add(row)
    db.session.commit()
    return row


def _change(obj, move, status):
    move(obj, status, "test")
    db.session.commit()


@pytest.fixture
def running_sync(app, caddy, web):
    sync = IngressSync(app, caddy.admin_url, caddy.listen, web)
    stopping = None
    loop = asyncio.new_event_loop()

    def run():
        nonlocal stopping
        asyncio.set_event_loop(loop)
        stopping = asyncio.Event()
        loop.run_until_complete(sync.run(stopping))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sync
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        loop.close()


def eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_ready_deployment_answers_through_caddy_and_pages_follow_its_state(
        app, caddy, deployment, running_sync):
    host = "web.pr-1.staging.ingress.test"
    eventually(lambda: caddy.get(host) == (200, "hello from web"))

    landing = caddy.get("pr-1.staging.ingress.test")
    assert landing[0] == 200 and f"http://{host}" in landing[1]
    assert "db" in landing[1] and "exposes no port" in landing[1]   # says why db has no URL
    assert caddy.get("db.pr-1.staging.ingress.test")[0] == 404       # no route: no published port
    assert caddy.get("nobody.staging.ingress.test")[0] == 404

    caddy.add_foreign_route()
    node = db.session.get(Node, deployment.node_id)
    _change(node, move_node, "offline")
    running_sync.wake()
    status, body = eventually(lambda: (r := caddy.get(host))[0] == 503 and r)
    assert "offline" in body and "since" in body

    _change(node, move_node, "online")
    running_sync.wake()
    eventually(lambda: caddy.get(host) == (200, "hello from web"))

    _change(deployment, move_deployment, "deleting")
    running_sync.wake()
    status, body = eventually(lambda: (r := caddy.get(host))[0] == 404 and r)
    assert "No deployment answers at this address" in body
    assert caddy.get("status.example.test") == (200, "operator ok")   # the operator's route stays


def test_caddy_restarted_without_config_gets_a_full_sync(app, caddy, deployment, running_sync):
    host = "web.pr-1.staging.ingress.test"
    eventually(lambda: caddy.get(host) == (200, "hello from web"))
    caddy.stop()
    caddy.start()          # empty config: our server and routes are gone
    eventually(lambda: caddy.get(host) == (200, "hello from web"), timeout=20)


def test_a_new_controller_rebuilds_the_table_and_keeps_foreign_routes(app, caddy, deployment, web):
    first = IngressSync(app, caddy.admin_url, caddy.listen, web)
    first.round()
    caddy.add_foreign_route()
    second = IngressSync(app, caddy.admin_url, caddy.listen, web)   # a restarted controller
    second.round()
    routes = caddy.config("/config/apps/http/servers/nullops/routes")
    assert [route.get("@id") for route in routes] == [
        "nullops-lookup", "operator-status", "nullops-page", "nullops-proxy"]
    hosts = [m["input"] for m in caddy.config(f"/id/{caddy_api.MAP_ID}/mappings")]
    assert hosts == ["web.pr-1.staging.ingress.test"]
    assert caddy.get("status.example.test") == (200, "operator ok")


def test_caddy_down_is_retried(app, tmp_path, deployment):
    sync = IngressSync(app, "http://127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9")
    with pytest.raises(caddy_api.CaddyUnavailable, match="unreachable"):
        sync.round()


def test_a_service_that_does_not_answer_gets_a_page_not_an_empty_error(app, caddy, deployment,
                                                                       running_sync):
    deployment.published = {"web": {"ports": {"8000": _closed_port()}}}   # status unchanged
    db.session.commit()
    running_sync.wake([deployment.id])   # as the controller does after storing the agent's event
    status, body = eventually(lambda: (r := caddy.get("web.pr-1.staging.ingress.test"))[0] == 502 and r)
    assert "not answering" in body


def _closed_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_moved_elsewhere_is_put_back_by_a_full_sync(app, caddy, deployment, web):
    sync = IngressSync(app, caddy.admin_url, caddy.listen, web)
    sync.round()
    other = caddy_api.CaddyAdmin(caddy.admin_url, "127.0.0.1:9", web)   # another installation
    other.full_sync({})
    sync.round()
    assert caddy.config("/config/apps/http/servers/nullops/listen") == [caddy.listen]
    assert caddy.get("web.pr-1.staging.ingress.test") == (200, "hello from web")


def _second(deployment, name, port):
    row = Deployment(name=name, project_id=deployment.project_id, environment_id=deployment.environment_id,
                     node_id=deployment.node_id, pipeline_version_id=deployment.pipeline_version_id,
                     tags={}, cpus=0.5, memory_mb=128, status="ready",
                     published={"web": {"ports": {"8000": port}}})
    db.session.add(row)
    db.session.commit()
    return row


def _writes(sync):
    """What the sync sends Caddy from now on (the real calls, recorded on their way)."""
    sent, call = [], sync.caddy._call

    def recording(method, path, body=None):
        if method != "GET":
            sent.append((method, path, body))
        return call(method, path, body)

    sync.caddy._call = recording
    return sent


def test_a_deployment_becoming_ready_or_going_away_changes_only_its_own_hosts_in_caddy(
        app, caddy, deployment, web, upstream):
    sync = IngressSync(app, caddy.admin_url, caddy.listen, web)
    sync.round()
    assert sync.rounds == {"full": 1, "incremental": 0, "repaired": 0}
    sent = _writes(sync)

    second = _second(deployment, "pr-2", upstream)
    sync.round(force=True)   # woken by the commit
    host = "web.pr-2.staging.ingress.test"
    assert sent == [("POST", f"/id/{caddy_api.MAP_ID}/mappings/...", [
        {"@id": f"nullops-host-{host}", "input": host, "outputs": [f"127.0.0.1:{upstream}"]}])]
    assert caddy.get(host) == (200, "hello from web")

    sent.clear()
    _change(second, move_deployment, "deleting")
    sync.round(force=True)
    assert sent == [("DELETE", f"/id/nullops-host-{host}", None)]
    assert caddy.get(host)[0] == 404
    assert caddy.get("web.pr-1.staging.ingress.test") == (200, "hello from web")   # untouched
    assert sync.rounds == {"full": 1, "incremental": 2, "repaired": 0}


def test_drift_in_caddys_map_is_repaired_by_the_periodic_full_round(app, caddy, deployment, web,
                                                                    monkeypatch):
    sync = IngressSync(app, caddy.admin_url, caddy.listen, web)
    sync.round()
    host = "web.pr-1.staging.ingress.test"
    # Someone removes our entry and adds one of their own: nothing in the database changed.
    urllib.request.urlopen(urllib.request.Request(
        f"{caddy.admin_url}/id/nullops-host-{host}", method="DELETE"), timeout=5).read()
    urllib.request.urlopen(urllib.request.Request(
        f"{caddy.admin_url}/id/{caddy_api.MAP_ID}/mappings", method="POST",
        data=json.dumps({"input": "stray.staging.ingress.test", "outputs": ["127.0.0.1:9"]}).encode(),
        headers={"Content-Type": "application/json"}), timeout=5).read()
    assert caddy.get(host)[0] != 200   # the page view's answer, not the service's
    sync.round()
    assert sync.rounds["repaired"] == 0   # an ordinary round trusts what it applied
    monkeypatch.setattr("app.ingress.sync.REBUILD_S", 0.0)   # the safety net's time has come
    sync.round()
    assert sync.rounds["repaired"] == 1
    assert caddy.get(host) == (200, "hello from web")
    assert [m["input"] for m in caddy.config(f"/id/{caddy_api.MAP_ID}/mappings")] == [host]
