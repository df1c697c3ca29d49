"""Deploy versus docker-compose: the reference demo (demo/README.md: PostgreSQL ->
postgres-database -> sql-script -> web -> http-wait) brought up and torn down three ways:

1. NullOps: the service layer's create (what POST /api/v1/deployments calls) with the real
   controller in this process and a real agent process on the local engine, until the row is
   `ready`; teardown from the delete request until the row is `deleted` and no container or
   network of it is left. Measured as shipped (the controller finds new rows by polling every
   --poll-s, 1 s by default, `nullops controller`) and with the controller woken at the create
   (what a notification from the web tier would give);
2. docker-compose (Debian's 1.29): a generated compose file of the same containers, PostgreSQL
   with a healthcheck, the plugin steps as one-shot containers fed their JSON on stdin (outputs
   passed on through a volume), web with depends_on conditions and a healthcheck, http-wait
   last; `up -d` until http-wait exited 0, then `down -v -t 2` (the agent's stop grace);
3. the floor: a plain docker SDK script starting the same containers in dependency order,
   noticing readiness as fast as it can (benchmarks/pipeline_latency.py's approach).

Then how many demo deployments the node holds at once (--hold, stopped there) and how long 30
(--together) created at once take until all are ready. Run from the repository root (Docker,
PostgreSQL with the nullops_test role, the demo images of scripts/demo-images.sh present
locally, `apt-get install docker-compose`):

    .venv/bin/python -m benchmarks.deploy_vs_compose --runs 5

Registry tag lookups at create are answered from the local images (no registry needs to run),
and admission ignores the agent's live CPU figure (as tests/e2e/test_demo.py does: on a busy
2-core host it refuses for reasons this benchmark is not about); the node's CPU capacity is
overridden for the capacity phase so that memory, not the 0.5-CPU reservations, bounds it.
"""
import argparse
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import docker

from benchmarks.agent_fleet import Database
from tests.dockertools import left_behind, remove_labelled

REGISTRY = "127.0.0.1:5000"
IMAGES = {"db": f"{REGISTRY}/nullops/postgres:15", "appdb": f"{REGISTRY}/nullops/postgres-database:1.0",
          "schema": f"{REGISTRY}/nullops/sql-script:1.0", "web": f"{REGISTRY}/demo/web:1.0",
          "web-ready": f"{REGISTRY}/nullops/http-wait:1.0"}
BENCH_LABEL = "org.nullops.bench"
PG_URL = os.environ.get("NULLOPS_TEST_DATABASE_URL",
                        "postgresql://nullops_test:nullops_test@127.0.0.1:5432/nullops_test")
PASSWORD = "correct-horse-battery-" + secrets.token_hex(8)


def log(message):
    print(f"[deploy_vs_compose] {message}", file=sys.stderr, flush=True)


def timed(fn, *args):
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def plugin_input(params):
    return {"action": "run", "deployment": {"id": "bench", "name": "bench"}, "params": params,
            "secrets": {}, "outputs": {}, "services": {}}


def seed_sql():
    from app.demo import SEED_SQL
    return SEED_SQL


WAIT_PARAMS = {"url": "http://web:8000/health", "body_contains": "ok", "timeout_s": 90, "interval_s": 0.5}


# --- 3. the floor: a plain SDK script ------------------------------------------------------------
def _run_plugin(api, image, network, labels, payload):
    host_config = api.create_host_config(network_mode=network, mem_limit="128m", nano_cpus=500_000_000)
    cid = api.create_container(image, stdin_open=True, labels=labels, host_config=host_config)["Id"]
    sock = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
    api.start(cid)
    sock._sock.sendall(json.dumps(payload).encode())
    sock._sock.shutdown(socket.SHUT_WR)
    sock.close()
    status = api.wait(cid, timeout=120)["StatusCode"]
    out = api.logs(cid, stdout=True, stderr=status != 0)
    api.remove_container(cid, force=True)
    assert status == 0, out
    return json.loads(out)


def _service(api, name, step, labels, env, ports=None):
    host_config = api.create_host_config(network_mode=name, mem_limit="256m", nano_cpus=500_000_000,
                                         port_bindings={p: ("127.0.0.1", None) for p in ports or []})
    networking = api.create_networking_config({name: api.create_endpoint_config(aliases=[step])})
    cid = api.create_container(IMAGES[step], name=f"{name}-{step}", environment=env, labels=labels,
                               ports=ports, host_config=host_config, networking_config=networking)["Id"]
    api.start(cid)
    return cid


def _pg_ready(api, cid):
    probe = api.exec_create(cid, ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"])["Id"]
    api.exec_start(probe)
    return api.exec_inspect(probe)["ExitCode"] == 0


def floor_up(client, name, labels):
    api, password = client.api, secrets.token_urlsafe(16)
    client.networks.create(name, labels=labels, check_duplicate=True)
    db = _service(api, name, "db", labels, {"POSTGRES_PASSWORD": password})
    while not _pg_ready(api, db):
        pass   # back to back: an exec round trip is the poll interval
    out = _run_plugin(api, IMAGES["appdb"], name, labels, plugin_input(
        {"host": "db", "port": "5432", "admin_password": password, "database": "demo", "user": "demo_app"}))
    _run_plugin(api, IMAGES["schema"], name, labels, plugin_input({"url": out["url"], "sql": seed_sql()}))
    web = _service(api, name, "web", labels, {"DATABASE_URL": out["url"]}, ports=[8000])
    ip = api.inspect_container(web)["NetworkSettings"]["Networks"][name]["IPAddress"]
    while True:
        try:
            with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=1) as response:
                if b"ok" in response.read():
                    break
        except OSError:
            time.sleep(0.01)
    _run_plugin(api, IMAGES["web-ready"], name, labels, plugin_input(WAIT_PARAMS))


def floor_down(client, name, labels):
    containers = client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={labels[BENCH_LABEL]}"})
    threads = [threading.Thread(target=c.remove, kwargs={"force": True}) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.networks.get(name).remove()


# --- 2. docker-compose ---------------------------------------------------------------------------
def compose_file(labels, healthcheck_s):
    """JSON is YAML: docker-compose reads it as it is. `$$` is a literal `$` in compose."""
    password = secrets.token_urlsafe(16)
    interval = f"{int(healthcheck_s * 1000)}ms"
    py = "/opt/plugin/bin/python3"

    def plugin(image, make_input, after, output=None):
        pipe = f"| {py} /opt/plugin/plugin.py" + (f" > /shared/{output}" if output else "")
        return {"image": image, "labels": labels, "cpus": 0.5, "mem_limit": "128m",
                "volumes": ["shared:/shared"], "depends_on": after,
                "entrypoint": ["sh", "-c", f'{make_input} {pipe}'.replace("$", "$$")]}

    appdb_in = json.dumps(plugin_input({"host": "db", "port": "5432", "admin_password": password,
                                        "database": "demo", "user": "demo_app"}))
    schema_in = ("import json, os; url = json.load(open('/shared/appdb.json'))['url']; "
                 "print(json.dumps({'action': 'run', "
                 "'params': {'url': url, 'sql': os.environ['SEED_SQL']}}))")
    web_cmd = ('export DATABASE_URL="$(python3 -c "import json; print(json.load(open(\'/shared/appdb.json\'))'
               '[\'url\'])")"; exec python3 /app/server.py')
    health = ("import sys, urllib.request; sys.exit(0 if b'ok' in urllib.request.urlopen("
              "'http://127.0.0.1:8000/health', timeout=2).read() else 1)")
    services = {
        "db": {"image": IMAGES["db"], "labels": labels, "cpus": 0.5, "mem_limit": "256m",
               "environment": {"POSTGRES_PASSWORD": password},
               "healthcheck": {"test": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"],
                               "interval": interval, "timeout": "5s", "retries": 600}},
        "appdb": plugin(IMAGES["appdb"], f"printf '%s' '{appdb_in}'",
                        {"db": {"condition": "service_healthy"}}, "appdb.json"),
        "schema": {**plugin(IMAGES["schema"], f'{py} -c "{schema_in}"',
                            {"appdb": {"condition": "service_completed_successfully"}}),
                   "environment": {"SEED_SQL": seed_sql().replace("$", "$$")}},
        "web": {"image": IMAGES["web"], "labels": labels, "cpus": 0.5, "mem_limit": "256m",
                "volumes": ["shared:/shared"], "ports": ["127.0.0.1::8000"],
                "entrypoint": ["sh", "-c", web_cmd.replace("$", "$$")],
                "depends_on": {"schema": {"condition": "service_completed_successfully"}},
                "healthcheck": {"test": ["CMD", "python3", "-c", health], "interval": interval,
                                "timeout": "5s", "retries": 600}},
        "web-ready": plugin(IMAGES["web-ready"], f"printf '%s' '{json.dumps(plugin_input(WAIT_PARAMS))}'",
                            {"web": {"condition": "service_healthy"}}),
    }
    services["web-ready"]["entrypoint"][2] = services["web-ready"]["entrypoint"][2].replace(
        "/opt/plugin/bin/python3", "python3")
    return {"version": "2.4", "services": services, "volumes": {"shared": {"labels": labels}},
            "networks": {"default": {"labels": labels}}}


def compose(folder, project, *args):
    result = subprocess.run(["docker-compose", "-p", project, "-f", str(folder / "compose.json"), *args],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"docker-compose {' '.join(args)}: {result.stderr[-2000:]}")


def compose_up(client, folder, project):
    compose(folder, project, "up", "-d")
    # up -d returns once web-ready is started; the stack is ready when it exited 0.
    (ready,) = client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={project}",
                                                                   "com.docker.compose.service=web-ready"]})
    status = ready.wait(timeout=120)["StatusCode"]
    assert status == 0, ready.logs().decode()


def compose_down(folder, project):
    compose(folder, project, "down", "-v", "-t", "2")


# --- 1. NullOps: service layer + real controller + real agent process ----------------------------
class NullOps:
    def __init__(self, workdir, poll_s):
        from flask_migrate import upgrade

        from app import create_app
        from app.config import TestConfig
        from app.controller import Controller
        from app.extensions import db

        self.db, self.workdir = db, workdir
        self.database = Database(PG_URL)
        self.database.create()
        self.app = create_app(TestConfig(database_url=self.database.url))
        self.context = self.app.app_context()
        self.context.push()
        upgrade()
        self.controller = Controller(self.app, poll_s=poll_s)
        self.agent = None
        self.cleanup_retries = {}
        self.node_id = f"bench-{uuid.uuid4().hex[:8]}"

    def start(self):
        from sqlalchemy import select

        from app import demo
        from app.models import Environment, Node, Project
        from app.models import nodes as node_model
        from app.services import catalog, nodes, registries, users
        from tests.agent.link.support import AgentProcess
        from tests.e2e.test_demo import _free_port

        # Tag lookups answered from the local images; admission by memory and capacity only.
        local = {ref.rsplit(":", 1)[1] for image in docker.from_env().images.list(f"{REGISTRY}/demo/web")
                 for ref in image.tags}
        registries.list_tags = lambda registry, image, pattern=None: sorted(local)
        real = node_model.reported_free
        node_model.reported_free = lambda figures: (None, real(figures)[1])
        self.admin = users.create(None, "bench-admin", PASSWORD, role="admin")
        demo.seed(self.admin, f"http://{REGISTRY}")
        self.project = self.db.session.scalar(select(Project).where(Project.name == demo.PROJECT))
        self.environment = catalog.create(self.admin, Environment, "local", base_domain="localhost")
        port = _free_port()
        node, token, _command = nodes.add(self.admin, self.environment, "local", "127.0.0.1", port)
        self.node_pk = node.id
        self.agent = AgentProcess(self.workdir / "agent", token=token, real=True,
                                  args=("--port", str(port), "--node-id", self.node_id,
                                        "--publish-host", "127.0.0.1"))
        self.agent.wait_for(re.compile(r"listening on https://"))
        self.controller.start()
        deadline = time.monotonic() + 60
        while self._node().status != "online":
            assert time.monotonic() < deadline, f"node not online: {self._node().status_reason}"
            time.sleep(0.1)
        self.Node = Node

    def _node(self):
        from app.models import Node

        self.db.session.expire_all()
        return self.db.session.get(Node, self.node_pk)

    def set_cpus(self, cpus):
        node = self._node()
        node.cpus_override = cpus
        self.db.session.commit()

    def _wake(self, wake):
        if wake and self.controller.manager is not None:
            self.controller.manager.wake()

    def wait(self, ids, status, timeout=600):
        """Until every row has `status`. A cleanup_failed row while deleting is retried by the
        controller: noted in self.cleanup_retries, not fatal."""
        from sqlalchemy import select

        from app.models import Deployment

        deadline = time.monotonic() + timeout
        fatal = ("failed",) if status == "deleted" else ("failed", "cleanup_failed")
        while True:
            self.db.session.expire_all()
            rows = self.db.session.execute(select(Deployment.id, Deployment.status, Deployment.status_message)
                                           .where(Deployment.id.in_(ids))).all()
            for row in rows:
                if row.status == "cleanup_failed" and row.id not in self.cleanup_retries:
                    self.cleanup_retries[row.id] = row.status_message
                    log(f"deployment {row.id} cleanup_failed (the controller retries): {row.status_message}")
            bad = [r for r in rows if r.status in fatal]
            if bad:
                raise RuntimeError(f"{len(bad)} deployment(s) {bad[0].status}: {bad[0].status_message}")
            if all(r.status == status for r in rows):
                return
            if time.monotonic() > deadline:
                waiting = [r for r in rows if r.status != status]
                raise RuntimeError(f"{len(waiting)} not {status} after {timeout} s: {waiting[:3]}")
            time.sleep(0.02)

    def create(self, names, wake):
        from app.services import deployments

        ids = [deployments.create(self.admin, self.project, self.environment, name, {"web": "1.0"}).id
               for name in names]
        self._wake(wake)
        return ids

    def up(self, name, wake):
        ids = self.create([name], wake)
        self.wait(ids, "ready")
        return ids[0]

    def down(self, ids, wake):
        from app.models import Deployment
        from app.services import deployments

        for deployment_id in ids:
            deployments.request_delete(self.admin, self.db.session.get(Deployment, deployment_id))
        self._wake(wake)
        self.wait(ids, "deleted")

    def left(self, deployment_id):
        return left_behind(docker.from_env(), [f"org.nullops.node={self.node_id}",
                                               f"org.nullops.deployment=dep-{deployment_id}"])

    def events(self, deployment_id):
        from sqlalchemy import select

        from app.models import DeploymentEvent

        rows = self.db.session.scalars(select(DeploymentEvent).where(
            DeploymentEvent.deployment_id == deployment_id).order_by(DeploymentEvent.id)).all()
        return [(e.at, e.kind, e.message) for e in rows]

    def published_port(self, deployment_id):
        from app.models import Deployment

        deployment = self.db.session.get(Deployment, deployment_id)
        return ((deployment.published or {}).get("web") or {}).get("ports", {}).get("8000")

    def stop(self):
        try:
            self.controller.stop()
            if self.agent is not None:
                self.agent.stop()
            self.db.session.remove()
            self.db.engine.dispose()
            self.context.pop()
        finally:
            self.database.drop()
            remove_labelled(docker.from_env(), f"org.nullops.node={self.node_id}")


# --- capacity: many at once ----------------------------------------------------------------------
def web_answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/items", timeout=10) as response:
            return len(json.loads(response.read())["items"]) == 3
    except (OSError, ValueError, KeyError):
        return False


def capacity(nullops, together, hold):
    import psutil

    nullops.set_cpus(64)   # memory and the machine bound it, not the 0.5-CPU reservations
    available = psutil.virtual_memory().available
    started = time.perf_counter()
    ids = nullops.create([f"many-{i}" for i in range(together)], wake=False)
    nullops.wait(ids, "ready", timeout=900)
    together_s = time.perf_counter() - started
    log(f"{together} created at once: all ready after {together_s:.1f} s")
    more = nullops.create([f"many-{i}" for i in range(together, hold)], wake=False)
    nullops.wait(more, "ready", timeout=900)
    ids += more
    time.sleep(5)  # settle, then look at what they hold
    held_mb = (available - psutil.virtual_memory().available) / 2**20
    answering = sum(web_answers(nullops.published_port(i)) for i in ids)
    load = os.getloadavg()
    log(f"{len(ids)} held: {answering} webs answer with their 3 seeded rows; {held_mb:.0f} MB more in use; "
        f"load {load[0]:.1f}")
    started = time.perf_counter()
    nullops.down(ids, wake=False)
    down_s = time.perf_counter() - started
    left = [x for i in ids for x in nullops.left(i)]
    assert not left, left
    return {"together": together, "together_s": together_s, "held": len(ids), "answering": answering,
            "held_mb": held_mb, "load": load[0], "down_s": down_s,
            "available_mb": available / 2**20, "cleanup_retries": len(nullops.cleanup_retries)}


def print_table(results, args, load_before):
    med = {k: statistics.median(v) for k, v in results.items()}
    spread = {k: (min(v), max(v)) for k, v in results.items()}
    print(f"\nDeploy versus docker-compose: the demo stack, {args.runs} runs, medians (min-max); "
          f"{os.cpu_count()} cores; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print("| phase | plain SDK floor | docker-compose | NullOps (shipped, poll "
          f"{args.poll_s:g} s) | NullOps (controller woken) | shipped / floor | woken / floor | "
          "shipped / compose | woken / compose |\n|---|---|---|---|---|---|---|---|---|")
    for phase in ("up", "down"):
        keys = [f"{k}_{phase}" for k in ("floor", "compose", "nullops", "woken")]
        cells = [f"{med[k]:.2f} s ({spread[k][0]:.2f}-{spread[k][1]:.2f})" for k in keys]
        floor, comp = med[f"floor_{phase}"], med[f"compose_{phase}"]
        ratios = [med[f"nullops_{phase}"] / floor, med[f"woken_{phase}"] / floor,
                  med[f"nullops_{phase}"] / comp, med[f"woken_{phase}"] / comp]
        label = "up (to ready)" if phase == "up" else "teardown (to deleted)"
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--poll-s", type=float, default=1.0, help="the controller's poll (shipped: 1 s)")
    parser.add_argument("--healthcheck-s", type=float, default=0.5, help="compose healthcheck interval")
    parser.add_argument("--together", type=int, default=30)
    parser.add_argument("--hold", type=int, default=40)
    args = parser.parse_args(argv)
    client = docker.from_env(timeout=300, max_pool_size=32)
    for image in IMAGES.values():
        client.images.get(image)   # bash scripts/demo-images.sh makes them
    run_label = uuid.uuid4().hex[:8]
    labels = {BENCH_LABEL: run_label}
    selector = f"{BENCH_LABEL}={run_label}"
    load_before = os.getloadavg()
    results = {k: [] for k in ("floor_up", "floor_down", "compose_up", "compose_down", "nullops_up",
                               "nullops_down", "woken_up", "woken_down")}
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        nullops = NullOps(workdir, args.poll_s)
        try:
            nullops.start()
            spec = compose_file(labels, args.healthcheck_s)
            (workdir / "compose.json").write_text(json.dumps(spec, indent=1))
            for index in range(args.runs + 1):  # round 0 warms caches and is not counted
                name = f"bench-{run_label}-{index}"
                figures = {"floor_up": timed(floor_up, client, name, labels),
                           "floor_down": timed(floor_down, client, name, labels)}
                figures["compose_up"] = timed(compose_up, client, workdir, name)
                figures["compose_down"] = timed(compose_down, workdir, name)
                for key, wake in (("nullops", False), ("woken", True)):
                    started = time.perf_counter()
                    deployment_id = nullops.up(f"{key}-{index}", wake)
                    figures[f"{key}_up"] = time.perf_counter() - started
                    if index == args.runs and not wake:
                        profile = nullops.events(deployment_id)
                    figures[f"{key}_down"] = timed(nullops.down, [deployment_id], wake)
                    assert not nullops.left(deployment_id), nullops.left(deployment_id)
                assert not left_behind(client, selector), left_behind(client, selector)
                if index:
                    for key, value in figures.items():
                        results[key].append(value)
                log(f"run {index}{' (warm-up)' if not index else ''}: "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items())
                    + f"; load {os.getloadavg()[0]:.1f}")
            log("NullOps events of the last shipped run (profile):")
            first = profile[0][0]
            for at, kind, message in profile:
                log(f"  +{(at - first).total_seconds():6.2f}s {kind}: {message[:110]}")
            print_table(results, args, load_before)
            many = capacity(nullops, args.together, args.hold)
        finally:
            for number in range(args.runs + 1):
                subprocess.run(["docker-compose", "-p", f"bench-{run_label}-{number}", "-f",
                                str(workdir / "compose.json"), "down", "-v", "-t", "0"],
                               capture_output=True, timeout=120)
            remove_labelled(client, selector)
            nullops.stop()
    print(f"\n{many['together']} created at once: all ready in {many['together_s']:.1f} s; "
          f"{many['held']} held at once ({many['answering']} webs answering with their rows), "
          f"{many['held_mb']:.0f} MB more memory in use of {many['available_mb']:.0f} MB available, "
          f"load {many['load']:.1f}; all {many['held']} deleted in {many['down_s']:.1f} s "
          f"({many['cleanup_retries']} cleanup_failed on the way, retried by the controller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
