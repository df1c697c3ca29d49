"""Ingress: how fast a ready deployment becomes routable through Caddy, how long a full sync of
5,000 routes takes, and what Caddy adds to a request compared with going straight to the
container. Run from the repository root (PostgreSQL, Docker, Caddy and the test images as
`make test` prepares them):

    .venv/bin/python -m benchmarks.ingress --routes 5000 --trials 30 --requests 2000

It creates its own database `nullops_bench_<random>` (dropped at the end), a real Caddy on free
loopback ports, and one busybox httpd container published on 127.0.0.1 that every route points
at. Deployment rows are written directly (the agent's part is measured by
benchmarks/pipeline_latency.py); "ready to routable" is from the commit that makes a deployment
ready, with the controller's wake-up, until a request through Caddy gets the service's answer,
measured with the shipped sync (only the new deployment's hosts, issue 19) and, in the same run,
with the whole table read and sent on every change as before. It waits until other work uses at
most --quiet of the machine, and writes its table into docs/benchmarks.md (section "Ingress
(Caddy)", between its markers) unless --no-docs.
"""
import argparse
import asyncio
import base64
import datetime
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
from benchmarks.api_latency import machine_busy_s, wait_for_quiet, write_docs
from tests.caddytools import CaddyProcess

ROOT = Path(__file__).resolve().parent.parent
NULLOPS = str(ROOT / ".venv" / "bin" / "nullops")
BUSYBOX = "nullops-test/busybox:latest"
RESOLVED = {"steps": [{"id": "web", "kind": "service", "registry_id": 1, "image": "web",
                       "tag_mode": "pinned", "tag": "1", "ports": [8000], "exposed_ports": [8000],
                       "depends_on": []}]}


BEGIN, END = "<!-- ingress:begin -->", "<!-- ingress:end -->"
SECTION_TEXT = "## Ingress (Caddy)\n\n"


class BusyShare:
    """How busy the whole machine was (a share of all cores) from now until share()."""

    def __init__(self):
        self.busy0, self.t0 = machine_busy_s(), time.monotonic()

    def share(self):
        return (machine_busy_s() - self.busy0) / ((time.monotonic() - self.t0) * (os.cpu_count() or 1))


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


def whole_table_sync(app, caddy):
    """The sync as it was before issue 19, for the comparison: every change reads the whole
    table again and replaces Caddy's whole map."""
    from app.ingress.routes import route_table
    from app.ingress.sync import IngressSync

    class WholeTable(IngressSync):
        def round(self, force=False, touched=()):
            with self.app.app_context():
                try:
                    table = route_table()
                finally:
                    db.session.remove()
            if self.applied is None or not self.caddy.has_our_routes():
                self.full_sync(table)
            elif table != self.applied:
                self.caddy.set_table(table)
                self.applied = table

    from app.extensions import db

    return WholeTable(app, caddy.admin_url, caddy.listen, "127.0.0.1:9")


def ready_to_routable(app, caddy, ids, trials, upstream_port, sync=None, prefix="new"):
    """A running sync loop; each trial commits a ready deployment, wakes the sync (as the
    controller does when an agent reports ready) and polls Caddy until the service answers."""
    from app.extensions import db
    from app.ingress.sync import IngressSync
    from app.models import Deployment

    sync = sync or IngressSync(app, caddy.admin_url, caddy.listen, "127.0.0.1:9")
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(sync.run(stopping)), daemon=True)
    thread.start()
    while sync.applied is None:
        time.sleep(0.05)
    times = []
    try:
        for trial in range(trials):
            name = f"{prefix}{trial}"
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
    log(f"sync rounds during the trials: {getattr(sync, 'rounds', 'n/a')}")
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
    parser.add_argument("--quiet", type=float, default=0.1,
                        help="wait until other work uses at most this share of the machine")
    parser.add_argument("--quiet-timeout", type=float, default=600.0)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    command = "python -m benchmarks.ingress " + " ".join(sys.argv[1:])

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
        # Before Caddy picks its free ports: someone may take them during a long wait.
        quiet = wait_for_quiet(args.quiet, args.quiet_timeout)
        with tempfile.TemporaryDirectory(prefix="ingress-bench-") as tmp:
            caddy = CaddyProcess(Path(tmp))
            caddy.start()
            log(f"seeding {args.routes} ready deployments")
            ids = seed(app, args.routes, upstream_port)
            busy = BusyShare()
            count, table_s, sync_s = full_sync(app, caddy, 5)
            log(f"full sync of {count} routes: table {statistics.median(table_s):.3f} s, "
                f"Caddy {statistics.median(sync_s):.3f} s")
            routable = ready_to_routable(app, caddy, ids, args.trials, upstream_port)
            before = ready_to_routable(app, caddy, ids, args.trials, upstream_port,
                                       whole_table_sync(app, caddy), prefix="old")
            busy_share = busy.share()
            direct = latency(upstream_port, "x", args.requests)
            through = latency(caddy.http_port, "web.d0.bench.ingress.bench", args.requests)
            caddy.stop()
    finally:
        if upstream is not None:
            upstream.remove(force=True)
        database.drop()

    lines = []

    def row(what, values, high=None):
        top = f"{max(values) * 1000:.1f} ms (max)" if high == "max" else f"{pct(values, 95) * 1000:.1f} ms"
        lines.append(f"| {what} | {pct(values, 50) * 1000:.1f} ms | {top} |")

    lines += ["| measure | p50 | p95 |", "|---|---|---|"]
    row(f"ready to routable, incremental: only its hosts ({len(routable)} trials, {count:,} routes "
        "in place)", routable)
    row(f"ready to routable, whole table on every change as before issue 19 ({len(before)} trials)",
        before)
    row(f"route table from PostgreSQL, {count:,} routes (5 rounds)", table_s, "max")
    row(f"full sync to Caddy, {count:,} routes (5 rounds)", sync_s, "max")
    row(f"request straight to the container ({len(direct)})", direct)
    row(f"request through Caddy ({len(through)})", through)
    lines += ["", f"Through Caddy / direct: p50 {pct(through, 50) / pct(direct, 50):.2f}, "
                  f"p95 {pct(through, 95) / pct(direct, 95):.2f}. Targets (issue 19): ready to routable "
                  f"p95 under 100 ms: **{'met' if pct(routable, 95) < 0.1 else 'NOT met'}**; full sync "
                  f"under 50 ms (max): **{'met' if max(sync_s) < 0.05 else 'NOT met'}**."]
    text_ = "\n".join([BEGIN, f"`{command}` ({datetime.date.today().isoformat()}; other work used "
                                f"{quiet:.0%} of the machine just before, the whole machine was "
                                f"{busy_share:.0%} busy while it measured, load average at the end "
                                f"{os.getloadavg()[0]:.1f})", "", *lines, END])
    print(text_)
    if not args.no_docs:
        write_docs(args.docs, text_, BEGIN, END, SECTION_TEXT)
        log(f"written into {args.docs}")

if __name__ == "__main__":
    main()
