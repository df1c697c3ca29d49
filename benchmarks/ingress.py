"""Ingress: how fast a ready deployment becomes routable through Caddy, how long a full sync of
5,000 routes takes, and what Caddy adds to a request compared with going straight to the
container. Run from the repository root (PostgreSQL, Docker, Caddy and the test images as
`make test` prepares them):

    .venv/bin/python -m benchmarks.ingress --routes 5000 --trials 30 --requests 2000

It creates its own database `nullops_bench_<random>` (dropped at the end), a real Caddy on free
loopback ports, and one busybox httpd container published on 127.0.0.1 that every route points
at. Deployment rows are written directly (the agent's part is measured by
benchmarks/pipeline_latency.py); "ready to routable" is from the commit that makes a deployment
ready, with the controller's wake-up, until a request through Caddy gets the service's answer.
"""
import argparse
import asyncio
import base64
import http.client
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker

from benchmarks.agent_fleet import Database
from tests.caddytools import CaddyProcess

ROOT = Path(__file__).resolve().parent.parent
NULLOPS = str(ROOT / ".venv" / "bin" / "nullops")
BUSYBOX = "nullops-test/busybox:latest"
RESOLVED = {"steps": [{"id": "web", "kind": "service", "registry_id": 1, "image": "web",
                       "tag_mode": "pinned", "tag": "1", "ports": [8000], "exposed_ports": [8000],
                       "depends_on": []}]}


def log(message):
    print(f"[ingress] {message}", file=sys.stderr, flush=True)


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_upstream(client, label):
    container = client.containers.run(
        BUSYBOX, ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8000 -h /www"],
        detach=True, labels={label: "1"}, ports={"8000/tcp": ("127.0.0.1", None)})
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"])
    deadline = time.monotonic() + 10
    while True:
        try:
            status, _ = get("127.0.0.1", port, "x")
            if status == 200:
                return container, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the upstream container did not answer")
        time.sleep(0.05)


def get(host, port, host_header, connection=None):
    conn = connection or http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/", headers={"Host": host_header})
    response = conn.getresponse()
    body = response.read()
    if connection is None:
        conn.close()
    return response.status, body


def seed(app, count, upstream_port):
    from app.extensions import db
    from app.models import Deployment, Environment, Node, PipelineVersion, Project

    with app.app_context():
        environment = Environment(name="bench", base_domain="ingress.bench")
        project = Project(name="shop")
        db.session.add_all([environment, project])
        db.session.flush()
        node = Node(environment_id=environment.id, name="node-1", host="127.0.0.1", status="online")
        version = PipelineVersion(project_id=project.id, number=1, definition={}, resolved=RESOLVED)
        db.session.add_all([node, version])
        db.session.flush()
        ids = {"environment": environment.id, "project": project.id, "node": node.id, "version": version.id}
        db.session.execute(Deployment.__table__.insert(), [
            _row(ids, f"d{i}", "ready", upstream_port) for i in range(count)])
        db.session.commit()
        return ids


def _row(ids, name, status, port):
    from app.models.types import utcnow

    now = utcnow()
    return {"name": name, "project_id": ids["project"], "environment_id": ids["environment"],
            "node_id": ids["node"], "pipeline_version_id": ids["version"], "tags": {}, "cpus": 0.1,
            "memory_mb": 64, "status": status, "status_message": "", "status_changed_at": now,
            "published": {"web": {"ports": {"8000": port}}}, "progress": {}, "created_at": now,
            "last_activity_at": now, "cleanup_attempts": 0}


def full_sync(app, caddy, rounds):
    from app.ingress.routes import route_table
    from app.ingress.sync import IngressSync
    from app.services.specs import VersionPorts

    table_s, sync_s = [], []
    for _ in range(rounds):
        sync = IngressSync(app, caddy.admin_url, caddy.listen, "127.0.0.1:9")
        started = time.perf_counter()
        with app.app_context():
            table = route_table(VersionPorts())  # read cold, as a controller's first round
        table_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        sync.full_sync(table)
        sync_s.append(time.perf_counter() - started)
    return len(table), table_s, sync_s


def ready_to_routable(app, caddy, ids, trials, upstream_port):
    """A running sync loop; each trial commits a ready deployment, wakes the sync (as the
    controller does when an agent reports ready) and polls Caddy until the service answers."""
    from app.extensions import db
    from app.ingress.sync import IngressSync
    from app.models import Deployment

    sync = IngressSync(app, caddy.admin_url, caddy.listen, "127.0.0.1:9")
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(sync.run(stopping)), daemon=True)
    thread.start()
    while sync.applied is None:
        time.sleep(0.05)
    times = []
    try:
        for trial in range(trials):
            name = f"new{trial}"
            host = f"web.{name}.bench.ingress.bench"
            with app.app_context():
                db.session.execute(Deployment.__table__.insert(), [_row(ids, name, "ready", upstream_port)])
                db.session.commit()
            started = time.perf_counter()
            sync.wake()
            while _status(caddy.http_port, host) != 200:
                time.sleep(0.002)
            times.append(time.perf_counter() - started)
            time.sleep(0.2)
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
    log(f"sync rounds during the trials: {sync.rounds}")
    return times


def _status(port, host):
    """A new connection each time: Caddy closes idle connections when its config changes."""
    try:
        return get("127.0.0.1", port, host)[0]
    except OSError:
        return None


def latency(port, host_header, requests):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(50):   # warm-up: connection, caches
        get("127.0.0.1", port, host_header, connection)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        status, _body = get("127.0.0.1", port, host_header, connection)
        times.append(time.perf_counter() - started)
        assert status == 200, status
    connection.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pg", default=os.environ.get(
        "NULLOPS_TEST_DATABASE_URL", "postgresql://nullops_test:nullops_test@127.0.0.1:5432/nullops_test"))
    args = parser.parse_args()

    database = Database(args.pg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update(NULLOPS_DATABASE_URL=database.url,
               NULLOPS_SECRET_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
               NULLOPS_SESSION_SECRET=secrets.token_urlsafe(48))
    client = docker.from_env()
    label = f"org.nullops.bench={uuid.uuid4().hex[:8]}"
    upstream = caddy = None
    try:
        database.create()
        subprocess.run([NULLOPS, "db", "upgrade"], cwd=ROOT, env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from app import create_app
        from app.config import Config

        app = create_app(Config(environ=env))
        upstream, upstream_port = start_upstream(client, label.split("=")[0])
        with tempfile.TemporaryDirectory(prefix="ingress-bench-") as tmp:
            caddy = CaddyProcess(Path(tmp))
            caddy.start()
            log(f"seeding {args.routes} ready deployments")
            ids = seed(app, args.routes, upstream_port)
            count, table_s, sync_s = full_sync(app, caddy, 5)
            log(f"full sync of {count} routes: table {statistics.median(table_s):.3f} s, "
                f"Caddy {statistics.median(sync_s):.3f} s")
            routable = ready_to_routable(app, caddy, ids, args.trials, upstream_port)
            direct = latency(upstream_port, "x", args.requests)
            through = latency(caddy.http_port, "web.d0.bench.ingress.bench", args.requests)
            caddy.stop()
    finally:
        if upstream is not None:
            upstream.remove(force=True)
        database.drop()

    def row(what, values, high=None):
        top = f"{max(values) * 1000:.1f} ms (max)" if high == "max" else f"{pct(values, 95) * 1000:.1f} ms"
        print(f"| {what} | {pct(values, 50) * 1000:.1f} ms | {top} |")

    print("| measure | p50 | p95 |\n|---|---|---|")
    row(f"ready to routable ({len(routable)} trials)", routable)
    row(f"route table from PostgreSQL, {count} routes (5 rounds)", table_s, "max")
    row(f"full sync to Caddy, {count} routes (5 rounds)", sync_s, "max")
    row(f"request straight to the container ({len(direct)})", direct)
    row(f"request through Caddy ({len(through)})", through)
    print(f"\nthrough Caddy / direct: p50 {pct(through, 50) / pct(direct, 50):.2f}, "
          f"p95 {pct(through, 95) / pct(direct, 95):.2f}")

if __name__ == "__main__":
    main()
