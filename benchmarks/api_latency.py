"""API latency: the deployment routes under `nullops web` (gunicorn, its default settings) on a
PostgreSQL database the size of a busy installation.

The database: 1 environment with 500 online nodes, 200 projects (each with one pipeline version
of pinned services, so a create never asks a registry), 10,000 deployments spread over them
(mostly ready, some deleted, a few in every other status) with a few events each, and a
non-admin user whose team has Full Access on every project and the environment, so every
request goes through the permission filters of app/access.py. 8 client threads, each with its
own keep-alive connection (spread evenly over the gunicorn workers) and that user's API token,
send requests back to back: a warm-up, then N of each operation:

- list: GET /api/v1/deployments, 25 per page, a quarter each unfiltered (pages 1-4), by
  project, by status=ready (pages 1-4) and by environment (pages 1-4);
- detail: GET /api/v1/deployments/<id> of a random seeded deployment;
- create: POST /api/v1/deployments (admission and placement; nothing reaches an agent, no
  controller runs) of a random project with a unique name; every answer must be 201.

Run from the repository root (PostgreSQL on 127.0.0.1 with the `nullops_test` role, which may
create databases):

    .venv/bin/python -m benchmarks.api_latency

It creates its own database `nullops_bench_<random>` and drops it at the end (--keep leaves it,
for EXPLAIN ANALYZE). On a shared machine it waits, before each operation, until other
processes use at most --quiet of it, and reports what they used while it measured. The table
is printed and written into docs/benchmarks.md (section "API latency", between its markers)
unless --no-docs.
"""
import argparse
import base64
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import psutil
import psycopg2
from sqlalchemy import bindparam, create_engine, select, text, update

from agent.protocol import verifier_for
from app.models import (
    ApiToken,
    Deployment,
    DeploymentEvent,
    Environment,
    Grant,
    Node,
    PipelineVersion,
    Plugin,
    Project,
    ProjectSecret,
    Registry,
    Service,
    Team,
    TeamMember,
    User,
)
from app.models.nodes import reported_free
from app.services.auth import TOKEN_PREFIX
from app.states import LIVE_DEPLOYMENT_STATUSES

ROOT = Path(__file__).resolve().parent.parent
NULLOPS = str(Path(sys.executable).with_name("nullops"))
DEFAULT_PG = "postgresql://nullops_test:nullops_test@127.0.0.1:5432/nullops_test"
SECTION = "## API latency"
BEGIN, END = "<!-- api_latency:begin -->", "<!-- api_latency:end -->"
NODE_CPUS, NODE_MEMORY_MB = 64, 256 * 1024
# Statuses of the seeded deployments (weights): mostly ready, a deleted history, some of each.
STATUS_MIX = {"ready": 78, "deleted": 12, "deploying": 2, "pending": 1, "failed": 2, "degraded": 1.5,
              "offline": 1, "deleting": 1.5, "cleanup_failed": 1}
TARGET_MS = {"list": 50, "detail": 50, "create": 150}
RESOURCES_REFRESH_S = 15  # what the controller writes for each node, as the agents report


def utcnow():
    return datetime.datetime.now(datetime.UTC)


def log(message):
    print(message, file=sys.stderr, flush=True)


# --- the database ------------------------------------------------------------------------------
class Database:
    """A scratch database `nullops_bench_<random>`, created by a role that may CREATE DATABASE."""

    def __init__(self, base_url, random_page_cost=0.0):
        self.base_url, self.random_page_cost = base_url, random_page_cost
        self.name = f"nullops_bench_{secrets.token_hex(4)}"
        self.url = base_url.rsplit("/", 1)[0] + "/" + self.name
        self.created = False

    def _admin(self, sql):
        conn = psycopg2.connect(self.base_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create(self):
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.created = True
        # docs/install.md suggests 1.1 for a database on SSD or in memory (--random-page-cost)
        if self.random_page_cost:
            self._admin(f'ALTER DATABASE "{self.name}" SET random_page_cost = {self.random_page_cost:g}')

    def one(self, sql, args=()):
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()
        finally:
            conn.close()

    def drop(self):
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False


def pipeline(registry_id):
    """(definition, resolved) of every project's pipeline: a database, a plugin step that makes
    its schema, a web service with an exposed port; every tag pinned."""
    db_step = {"id": "db", "kind": "service", "service": "bench-postgres", "registry_id": registry_id,
               "image": "postgres", "tag_mode": "pinned", "tag": "15", "tag_pattern": None,
               "ports": [5432], "exposed_ports": [], "command": None,
               "env": {"POSTGRES_PASSWORD": "${secrets.DB_PASSWORD}"},
               "health_check": {"type": "tcp", "port": 5432}, "depends_on": []}
    mkdb = {"id": "mkdb", "kind": "plugin", "plugin": "bench-postgres-database",
            "registry_id": registry_id, "image": "nullops/postgres-database", "tag": "1.0",
            "params": {"database": "shop", "password": "${secrets.DB_PASSWORD}"}, "cpus": 0.5,
            "memory_mb": 256, "timeout_s": 300, "network": True, "depends_on": ["db"]}
    web = {"id": "web", "kind": "service", "service": "bench-web", "registry_id": registry_id,
           "image": "team/shop-web", "tag_mode": "pinned", "tag": "1.4.2", "tag_pattern": None,
           "ports": [8000], "exposed_ports": [8000], "command": None,
           "env": {"DATABASE_URL": "postgresql://postgres:${secrets.DB_PASSWORD}@db/shop"},
           "health_check": {"type": "http", "port": 8000, "path": "/health"}, "depends_on": ["mkdb"]}
    definition = {"nodes": [{"id": "db", "service": "bench-postgres"},
                            {"id": "mkdb", "plugin": "bench-postgres-database", "params": mkdb["params"]},
                            {"id": "web", "service": "bench-web"}],
                  "edges": [{"from": "db", "to": "mkdb"}, {"from": "mkdb", "to": "web"}]}
    return definition, {"steps": [db_step, mkdb, web]}


class Seeder:
    """Bulk inserts through SQLAlchemy Core (the ORM per row would take minutes)."""

    def __init__(self, url, keyring, rng):
        self.engine = create_engine(url)
        self.keyring, self.rng = keyring, rng
        self.info = {}

    def insert(self, conn, model, rows, ids=False):
        table = model.__table__
        if not ids:
            conn.execute(table.insert(), rows)
            return None
        result = conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
        return [row[0] for row in result]

    def seed(self, node_count, project_count, deployment_count):
        rng, now = self.rng, utcnow()
        with self.engine.begin() as conn:
            registry_id = conn.scalar(select(Registry.id).where(Registry.is_default))
            environment_id = self.insert(conn, Environment, [
                {"name": "staging", "base_domain": "qa.example.com"}], ids=True)[0]
            # users: the benchmark's, and others in teams with grants of their own
            users = [{"username": f"user-{i:03d}", "full_name": f"User {i}", "role": "user",
                      "password_hash": "$argon2id$not-a-login", "session_nonce": secrets.token_hex(16)}
                     for i in range(60)]
            user_ids = self.insert(conn, User, users, ids=True)
            bench_user = user_ids[0]
            team_ids = self.insert(conn, Team, [{"name": f"team-{i:02d}"} for i in range(12)], ids=True)
            self.insert(conn, TeamMember, [{"team_id": team_ids[i % 12], "user_id": uid}
                                           for i, uid in enumerate(user_ids)])
            registry = {"registry_id": registry_id}
            self.insert(conn, Service, [
                {"name": "bench-postgres", "image": "postgres", "tag": "15", "ports": [5432],
                 "exposed_ports": [], **registry},
                {"name": "bench-web", "image": "team/shop-web", "tag": "1.4.2", "ports": [8000],
                 "exposed_ports": [8000], **registry}])
            self.insert(conn, Plugin, [{"name": "bench-postgres-database", "tag": "1.0", "network": True,
                                        "image": "nullops/postgres-database", **registry}])
            projects = [{"name": f"project-{i:03d}", "cpus": rng.choice([0.5, 1.0, 1.0, 2.0]),
                         "memory_mb": rng.choice([512, 1024, 1024, 2048])} for i in range(project_count)]
            project_ids = self.insert(conn, Project, projects, ids=True)
            secret = self.keyring.encrypt("bench-db-password", "project_secret.value")
            self.insert(conn, ProjectSecret, [{"project_id": pid, "name": "DB_PASSWORD",
                                               "value_ciphertext": secret} for pid in project_ids])
            definition, resolved = pipeline(registry_id)
            version_ids = self.insert(conn, PipelineVersion, [
                {"project_id": pid, "number": 1, "definition": definition, "resolved": resolved,
                 "created_by_id": bench_user} for pid in project_ids], ids=True)
            # The benchmark's team (team 0): Full Access on every project and the environment;
            # the other teams: read-only on a few projects each.
            grants = [{"team_id": team_ids[0], "project_id": pid, "environment_id": None, "level": "full"}
                      for pid in project_ids]
            grants.append({"team_id": team_ids[0], "project_id": None, "environment_id": environment_id,
                           "level": "full"})
            for team_id in team_ids[1:]:
                grants += [{"team_id": team_id, "project_id": pid, "environment_id": None,
                            "level": "read_only"} for pid in rng.sample(project_ids, 10)]
            self.insert(conn, Grant, grants)
            verifier = self.keyring.encrypt(verifier_for(secrets.token_urlsafe(32)), "node.verifier")
            node_ids = self.insert(conn, Node, [
                {"environment_id": environment_id, "name": f"node-{i:03d}",
                 "host": f"10.1.{i // 250}.{i % 250 + 1}", "port": 5000, "enabled": True,
                 "verifier_ciphertext": verifier, "thumbprint": "ab" * 32,
                 "status": "online", "last_seen_at": now, "agent_node_id": f"agent-{i:03d}",
                 "reported_cpus": NODE_CPUS, "reported_memory_mb": NODE_MEMORY_MB}
                for i in range(node_count)], ids=True)
            deployments = self.deployment_rows(deployment_count, projects, project_ids, version_ids,
                                                     node_ids, environment_id, bench_user, now)
            deployment_ids = self.insert(conn, Deployment, deployments, ids=True)
            self.insert(conn, DeploymentEvent, self.event_rows(deployments, deployment_ids, bench_user))
            raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
            self.insert(conn, ApiToken, [{"user_id": bench_user, "name": "api-latency", "prefix": raw[:10],
                                          "token_hash": hashlib.sha256(raw.encode()).hexdigest(),
                                          "last_used_at": now}])
        self.info = {"environment_id": environment_id, "project_ids": project_ids, "node_ids": node_ids,
                     "deployment_ids": deployment_ids, "token": raw,
                     "deleted": sum(1 for d in deployments if d["status"] == "deleted")}
        self.refresh_resources()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # as autovacuum would have, long ago
        return self.info

    def deployment_rows(self, count, projects, project_ids, version_ids, node_ids, environment_id,
                        user_id, now):
        rng = self.rng
        statuses, weights = list(STATUS_MIX), list(STATUS_MIX.values())
        rows = []
        for i in range(count):
            index = rng.randrange(len(project_ids))
            status = rng.choices(statuses, weights)[0]
            created = now - datetime.timedelta(minutes=rng.randrange(60, 60 * 24 * 60))
            ready = status in ("ready", "degraded", "offline")
            row = {"name": f"{projects[index]['name']}-pr-{i}", "project_id": project_ids[index],
                   "environment_id": environment_id, "node_id": rng.choice(node_ids),
                   "pipeline_version_id": version_ids[index], "tags": {"db": "15", "web": "1.4.2"},
                   "cpus": projects[index]["cpus"], "memory_mb": projects[index]["memory_mb"],
                   "status": status, "status_message": "", "status_changed_at": created,
                   "run_id": f"run-{i}" if status != "pending" else None,
                   "published": {"web": {"ports": {"8000": 40000 + i % 20000}}} if ready else {},
                   "progress": {"db": "ready", "mkdb": "done", "web": "ready"} if ready else {},
                   "created_by_id": user_id, "created_at": created, "last_activity_at": created,
                   "delete_requested_at": None, "deleted_at": None}
            if status == "deleted":
                row["delete_requested_at"] = row["deleted_at"] = created + datetime.timedelta(hours=5)
            rows.append(row)
        return rows

    @staticmethod
    def event_rows(deployments, ids, user_id):
        rows = []
        for row, deployment_id in zip(deployments, ids, strict=True):
            at = row["created_at"]
            rows.append({"deployment_id": deployment_id, "at": at, "kind": "created", "actor_id": user_id,
                         "message": "created", "data": {"pipeline_version": 1}})
            for step, (old, new) in enumerate((("pending", "deploying"), ("deploying", row["status"]))):
                rows.append({"deployment_id": deployment_id, "at": at + datetime.timedelta(seconds=10 + step),
                             "kind": "status", "actor_id": None, "message": f"{old} -> {new}",
                             "data": {"from": old, "to": new}})
        return rows

    def refresh_resources(self):
        """Every node's latest resources frame, as the controller stores it: admission ignores
        figures older than 60 s. `allocated` is what the node's live deployments reserve."""
        with self.engine.begin() as conn:
            reserved = {node_id: (cpus, memory) for node_id, cpus, memory in conn.execute(
                text("SELECT node_id, sum(cpus), sum(memory_mb) FROM deployments "
                     "WHERE status = ANY(:live) AND node_id IS NOT NULL GROUP BY node_id"),
                {"live": list(LIVE_DEPLOYMENT_STATUSES)})}
            now, table = utcnow(), Node.__table__
            rows = []
            for node_id in self.info["node_ids"]:
                cpus, memory_mb = reserved.get(node_id, (0, 0))
                figures = {
                    "host": {"cpus": NODE_CPUS, "cpu_percent": round(self.rng.uniform(3, 30), 1),
                             "memory_total": NODE_MEMORY_MB * 2 ** 20,
                             # containers use about half their limit; the host keeps 8 GiB
                             "memory_available": (NODE_MEMORY_MB - int(memory_mb) // 2 - 8192) * 2 ** 20},
                    "allocated": {"cpus": round(float(cpus), 3), "memory_mb": int(memory_mb)}}
                free_cpus, free_memory_mb = reported_free(figures)
                rows.append({"node_id": node_id, "at": now, "figures": figures, "free_cpus": free_cpus,
                             "free_memory_mb": free_memory_mb})
            conn.execute(update(table).where(table.c.id == bindparam("node_id")).values(
                resources=bindparam("figures"), resources_at=bindparam("at"), last_seen_at=bindparam("at"),
                reported_free_cpus=bindparam("free_cpus"),
                reported_free_memory_mb=bindparam("free_memory_mb")), rows)

    def dispose(self):
        self.engine.dispose()


# --- the web tier and its clients --------------------------------------------------------------
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """`nullops web` as an operator starts it (gunicorn, gthread), as a subprocess."""

    def __init__(self, env, workdir, web_args, database):
        self.port, self.database = free_port(), database
        self.log = open(workdir / "web.log", "w")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([NULLOPS, "web", "--bind", f"127.0.0.1:{self.port}", *web_args],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nullops web exited (code {self.proc.returncode}); see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nullops web was not ready within 60 s; see {self.log.name}")
            time.sleep(0.2)
        self.master = psutil.Process(self.proc.pid)

    def processes(self):
        return [self.master, *self.master.children(recursive=True)]

    def connect_evenly(self, clients, tries=200):
        """Connect the clients so that each worker holds as many of their connections as the
        others (one more at most), as a proxy's pool or many short connections would be spread
        on average. Each new connection goes to whichever worker accepts it first, and 8
        keep-alive connections may well end up 8/0: one worker, one GIL, half the machine. So
        the clients connect one at a time, and a connection that lands on a worker that has
        its share already is made again."""
        for client in clients:
            if client.conn is not None:
                client.conn.close()
                client.conn = None
        self._wait_for_connections(0)
        workers = len(self.master.children())
        for k, client in enumerate(clients):
            share = -(-(k + 1) // workers)  # after this one, no worker needs more than this
            for _ in range(tries):
                client.connect()
                counts = self._wait_for_connections(k + 1)
                if max(counts) <= share:
                    break
                client.conn.close()
                client.conn = None
                self._wait_for_connections(k)
            else:
                client.connect()
        counts = self._wait_for_connections(len(clients))
        if max(counts) - min(counts) > 1:
            log(f"WARNING: the connections stay spread {counts} over the workers")
        return counts

    def _wait_for_connections(self, expected, timeout=2.0):
        deadline = time.monotonic() + timeout
        while sum(counts := self.connections_per_worker()) != expected and time.monotonic() < deadline:
            time.sleep(0.005)
        return counts

    def connections_per_worker(self):
        """Established client connections each worker holds (the kernel hands them out)."""
        counts = []
        for worker in self.master.children():
            counts.append(sum(1 for c in worker.net_connections("tcp")
                              if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port))
        return counts

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Client:
    """One keep-alive HTTP connection with the benchmark user's token (or, with none, the
    session cookies the server sets)."""

    def __init__(self, port, token=None):
        self.port, self.conn, self.reconnects, self.cookies = port, None, 0, {}
        self.headers = {"Accept": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def connect(self):
        """A fresh connection (gunicorn closes idle ones after 2 s)."""
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.conn.connect()

    def call(self, method, path, body=None, form=None):
        """(status, body, seconds); `body` goes as JSON, `form` as a urlencoded form."""
        headers, payload = dict(self.headers), None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            payload = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            if self.conn is None:
                self.connect()
            start = time.perf_counter()
            try:
                self.conn.request(method, path, payload, headers)
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                self.reconnects += 1
                if method != "GET" or attempt == 2:  # a POST may have gone through: no retry
                    raise
                continue
            elapsed = time.perf_counter() - start
            for cookie in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            if response.will_close:
                self.conn.close()
                self.conn = None
            return response.status, data, elapsed
        raise AssertionError("unreachable")


# --- CPU over one phase ------------------------------------------------------------------------
def speed_check_ms(rounds=5):
    """How long this machine takes for a fixed piece of pure-Python work (best of `rounds`): the
    same code measures slower when the host under this virtual machine is busy (a third or more,
    with nothing else running here), and this says which kind of minute a phase ran in."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        best = min(best, time.process_time() - start)
    return 1000 * best


def machine_busy_s():
    """CPU seconds all processes of the machine used so far (every core)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def postgres_cpu(database):
    """{pid: CPU seconds} of the PostgreSQL backends serving the benchmark's database (their
    process title names it; other databases on the server are other people's work)."""
    cpu = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = proc.info
        if info["name"] == "postgres" and info["cpu_times"] is not None \
                and any(database in part for part in info["cmdline"] or ()):
            cpu[proc.pid] = info["cpu_times"].user + info["cpu_times"].system
    return cpu


def cpu_s(processes):
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class CpuMeter:
    """CPU seconds of the web tier (master and workers), PostgreSQL (the benchmark database's
    backends), this process (the clients) and the whole machine over one phase; what is left
    is other processes' (on a shared machine, other people's tests)."""

    def __init__(self, server, database):
        self.server, self.database, self.me = server, database, psutil.Process()
        self.start = (cpu_s(server.processes()), postgres_cpu(database), cpu_s([self.me]), machine_busy_s())

    def figures(self):
        web0, pg0, me0, machine0 = self.start
        pg1 = postgres_cpu(self.database)
        figures = {"web_cpu_s": cpu_s(self.server.processes()) - web0,
                   "postgres_cpu_s": sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items()),
                   "client_cpu_s": cpu_s([self.me]) - me0, "machine_cpu_s": machine_busy_s() - machine0}
        ours = figures["web_cpu_s"] + figures["postgres_cpu_s"] + figures["client_cpu_s"]
        figures["other_cpu_s"] = max(0.0, figures["machine_cpu_s"] - ours)
        return figures


def wait_for_quiet(limit, timeout):
    """Wait until the machine, with the web tier idle, is at most `limit` busy (a share of all
    cores): on a shared machine other work would be measured too. Returns the last share."""
    start = time.monotonic()
    logged = -60.0
    while True:
        busy0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(2)
        share = (machine_busy_s() - busy0) / ((time.monotonic() - t0) * (os.cpu_count() or 1))
        waited = time.monotonic() - start
        if share <= limit:
            return share
        if waited >= timeout:
            log(f"WARNING: the machine is still {share:.0%} busy with other work; measuring anyway")
            return share
        if waited - logged >= 60:
            logged = waited
            log(f"the machine is {share:.0%} busy with other work; waiting ({waited:.0f} of at most "
                f"{timeout:.0f} s)")


# --- the load ----------------------------------------------------------------------------------
def list_request(info):
    environment, projects = info["environment_id"], info["project_ids"]

    def make(i, rng):
        variant, page = ("all", "project", "status", "environment")[i % 4], rng.randint(1, 4)
        query = {"all": f"page={page}", "project": f"project_id={rng.choice(projects)}",
                 "status": f"status=ready&page={page}",
                 "environment": f"environment_id={environment}&page={page}"}[variant]
        return variant, "GET", f"/api/v1/deployments?{query}", None, 200
    return make


def detail_request(info):
    ids = info["deployment_ids"]
    return lambda i, rng: ("detail", "GET", f"/api/v1/deployments/{rng.choice(ids)}", None, 200)


def create_request(info, prefix):
    environment, projects = info["environment_id"], info["project_ids"]

    def make(i, rng):
        body = {"project_id": rng.choice(projects), "environment_id": environment,
                "name": f"{prefix}-{i:05d}", "tags": {}}
        return "create", "POST", "/api/v1/deployments", body, 201
    return make


def run_phase(server, clients, make, count, seed):
    """`count` requests from all clients, back to back; per request (variant, seconds, ok,
    status, body of a failure)."""
    counter, lock = iter(range(count)), threading.Lock()
    results = [[] for _ in clients]
    barrier = threading.Barrier(len(clients) + 1)

    def work(k, client):
        rng = random.Random(seed * 1000 + k)
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            variant, method, path, body, expected = make(i, rng)
            try:
                status, data, elapsed = client.call(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                results[k].append((variant, None, False, None, repr(exc)))
                continue
            ok = status == expected
            failure = None if ok else data[:500].decode(errors="replace")
            results[k].append((variant, elapsed, ok, status, failure))

    threads = [threading.Thread(target=work, args=(k, c), name=f"client-{k}") for k, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    meter, t0 = CpuMeter(server, server.database), time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    return [r for per_client in results for r in per_client], wall, meter.figures()


def percentile(sorted_values, q):
    """Nearest rank."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def summarise(name, results, wall, cpu):
    ok = sorted(r[1] * 1000 for r in results if r[2])
    failures = [r for r in results if not r[2]]
    summary = {"operation": name, "requests": len(results), "failed": len(failures), "wall_s": wall,
               "per_s": len(results) / wall if wall else None, **cpu,
               **{f"p{q}_ms": percentile(ok, q) for q in (50, 95, 99)},
               "max_ms": ok[-1] if ok else None, "failures": {}}
    for _variant, _elapsed, _ok, status, body in failures:
        key = f"{status}: {(body or '')[:200]}"
        summary["failures"][key] = summary["failures"].get(key, 0) + 1
    variants = {}
    for variant in dict.fromkeys(r[0] for r in results):
        values = sorted(r[1] * 1000 for r in results if r[0] == variant and r[2])
        variants[variant] = {"requests": len(values), "p50_ms": percentile(values, 50),
                             "p95_ms": percentile(values, 95)}
    summary["variants"] = variants
    return summary


# --- report ------------------------------------------------------------------------------------
def fmt(value, digits=1):
    return "—" if value is None else f"{value:,.{digits}f}"


def table(summaries):
    lines = ["| operation | requests | failed | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | requests/s "
             "| target p95 | |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        target = TARGET_MS[s["operation"]]
        met = not missed(s)
        lines.append(f"| {s['operation']} | {s['requests']:,} | {s['failed']} | {fmt(s['p50_ms'])} "
                     f"| {fmt(s['p95_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['max_ms'])} | {fmt(s['per_s'], 0)} "
                     f"| < {target} ms | {'met' if met else '**missed**'} |")
    lines += ["", "| list variant | requests | p50 (ms) | p95 (ms) |", "|---|---|---|---|"]
    for s in summaries:
        if s["operation"] == "list":
            for variant, v in s["variants"].items():
                lines.append(f"| {variant} | {v['requests']:,} | {fmt(v['p50_ms'])} | {fmt(v['p95_ms'])} |")
    cores = os.cpu_count() or 1
    lines += ["", "| CPU per request (ms) | web tier | PostgreSQL | clients "
              f"| machine busy (% of {cores} cores) | of which other processes | speed check (ms) |",
              "|---" * 7 + "|"]
    for s in summaries:
        n, capacity = s["requests"] or 1, s["wall_s"] * cores / 100
        lines.append(f"| {s['operation']} | {fmt(1000 * s['web_cpu_s'] / n)} "
                     f"| {fmt(1000 * s['postgres_cpu_s'] / n)} | {fmt(1000 * s['client_cpu_s'] / n)} "
                     f"| {s['machine_cpu_s'] / capacity:.0f} | {s['other_cpu_s'] / capacity:.0f} "
                     f"| {fmt(s['speed_check_ms'])} |")
    return "\n".join(lines)


def missed(summary):
    return (summary["failed"] > 0 or summary["p95_ms"] is None
            or summary["p95_ms"] >= TARGET_MS[summary["operation"]])


def verdict(summaries):
    head = "Target (p95 under 50 ms for reads, under 150 ms for create, every create 201): "
    misses = [s for s in summaries if missed(s)]
    if not misses:
        return head + "**met**."
    parts = []
    for s in misses:
        failed = f", {s['failed']} failed" if s["failed"] else ""
        target = TARGET_MS[s["operation"]]
        parts.append(f"{s['operation']} p95 {fmt(s['p95_ms'])} ms (target < {target} ms{failed})")
    return head + "**NOT met**: " + "; ".join(parts) + "."


def machine(database, web_args):
    mem = psutil.virtual_memory().total / 2 ** 30
    os_name = platform.platform(terse=True)
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", os_name)
    except OSError:
        pass
    import gunicorn

    web = " ".join(web_args) or "--workers 2 --threads 8 (its defaults)"
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB, {os_name}, Python {platform.python_version()}, "
            f"PostgreSQL {database.one('SHOW server_version')[0]} on the same machine (stock settings, "
            f"random_page_cost {database.one('SHOW random_page_cost')[0]}), "
            f"gunicorn {gunicorn.__version__} through `nullops web {web}`, gthread workers, access log on")


def block(summaries, command, machine_line, seeded):
    return "\n".join([
        BEGIN,
        f"`{command}` ({datetime.date.today().isoformat()}; {machine_line}; seeded: {seeded})",
        "", table(summaries), "", verdict(summaries), END])


SECTION_TEXT = f"""{SECTION}

The deployment routes under `nullops web` (gunicorn as an operator starts it: 2 workers of 8
threads, gthread, the access log on) on a PostgreSQL database the size of a busy installation:
1 environment with 500 online nodes (64 CPUs, 256 GiB each, fresh resources figures), 200
projects with one pipeline version each (two pinned services and a plugin step), 10,000
deployments spread over them (78 % ready, 12 % deleted, the rest in every other status; three
events each), and a non-admin user whose team has Full Access on every project and the
environment, so every request goes through the permission filters of `app/access.py`. The
database is analyzed after seeding, as autovacuum would have done long before.

8 client threads on the same machine, each with its own keep-alive connection and that user's
API token, send requests back to back (no think time): after a warm-up (200 of each read, 40
creates), 2,000 lists, 2,000 details and 500 creates. Latency is from sending the request to
the last byte of the answer. The connections are spread evenly over the two workers (4 and 4,
reconnecting until they are): each new connection goes to whichever worker accepts it first,
and 8 keep-alive connections can end up 8 and 0, which leaves half the machine idle.

- **list**: `GET /api/v1/deployments`, 25 per page; a quarter each unfiltered (pages 1–4),
  `project_id=` a random project, `status=ready` (pages 1–4) and `environment_id=` (pages 1–4).
- **detail**: `GET /api/v1/deployments/<id>` of a random seeded deployment (deleted ones too).
- **create**: `POST /api/v1/deployments` of a random project with a unique name: validation,
  admission and placement over the 500 nodes, the row, its event and the audit entry; no
  controller runs, so nothing reaches an agent (the benchmark refreshes the nodes' resources
  figures every 15 s, as the controller does). Every answer must be 201.
- **CPU per request**: CPU time over the phase of the gunicorn processes, of the PostgreSQL
  backends serving the benchmark's database and of the benchmark's own process (the
  clients), divided by its requests. **Other processes** is what the rest of the machine
  used meanwhile: this machine is shared, and before each operation the benchmark waits until
  others use less than 10 % of it (`--quiet`), but it cannot stop them from starting later.
  **Speed check**: what a fixed piece of pure-Python work took just before the phase (best of
  5). This virtual machine's speed changes with its host's load, by a third or more within an
  hour with nothing else running here; CPU per request, and so the latencies, change with it.

Target on these 2 cores (issue 5): p95 under 50 ms for reads and under 150 ms for create.

"""


def write_docs(path, block_text, begin=BEGIN, end=END, section_text=SECTION_TEXT):
    """`block_text` (from `begin` to `end`) replaces the block between those markers in `path`;
    without them, the section is added at the end, its text first."""
    text_ = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text_ and end in text_:
        head, rest = text_.split(begin, 1)
        text_ = head + block_text + rest.split(end, 1)[1]
    else:
        text_ = text_.rstrip("\n") + "\n\n" + section_text + block_text + "\n"
    path.write_text(text_)


# --- the run -----------------------------------------------------------------------------------
class ResourcesRefresher(threading.Thread):
    """Fresh resources figures for every node while creates run, as the controller writes
    them from the agents' frames."""

    def __init__(self, seeder):
        super().__init__(name="resources", daemon=True)
        self.seeder, self.stopping = seeder, threading.Event()

    def run(self):
        while not self.stopping.wait(RESOURCES_REFRESH_S):
            self.seeder.refresh_resources()

    def stop(self):
        self.stopping.set()
        self.join(30)


def probe(client, info):
    """One list and one detail before measuring: the routes answer, and what the user sees."""
    status, data, _ = client.call("GET", "/api/v1/deployments?per_page=1")
    if status != 200:
        raise RuntimeError(f"GET /api/v1/deployments answered {status}: {data[:300]!r}")
    status, data2, _ = client.call("GET", f"/api/v1/deployments/{info['deployment_ids'][0]}")
    if status != 200:
        raise RuntimeError(f"GET /api/v1/deployments/<id> answered {status}: {data2[:300]!r}")
    return json.loads(data)["total"]


def measure(server, info, seeder, args):
    clients = [Client(server.port, info["token"]) for _ in range(args.clients)]
    info["listed_total"] = probe(clients[0], info)
    log(f"the list route shows the user {info['listed_total']:,} deployments")
    summaries = []
    plan = [("list", list_request(info), args.list, args.warmup),
            ("detail", detail_request(info), args.detail, args.warmup),
            ("create", create_request(info, "bench"), args.create, args.create_warmup)]
    for seed, (name, make, count, warmup) in enumerate(plan, start=1):
        refresher = None
        wait_for_quiet(args.quiet, args.quiet_timeout)
        speed = speed_check_ms()
        if name == "create":
            seeder.refresh_resources()  # admission ignores figures older than 60 s
            refresher = ResourcesRefresher(seeder)
            refresher.start()
        try:
            server.connect_evenly(clients)
            if warmup:
                warm = create_request(info, "warm") if name == "create" else make
                results, _, _ = run_phase(server, clients, warm, warmup, seed + 100)
                failed = sum(1 for r in results if not r[2])
                log(f"{name}: warm-up {warmup} requests, {failed} failed")
            results, wall, cpu = run_phase(server, clients, make, count, seed)
        finally:
            if refresher is not None:
                refresher.stop()
        summary = summarise(name, results, wall, cpu)
        summary["speed_check_ms"] = speed
        summary["connections_per_worker"] = server.connections_per_worker()
        summaries.append(summary)
        log(f"{name}: {count} requests in {wall:.1f} s, p50 {fmt(summary['p50_ms'])} ms, p95 "
            f"{fmt(summary['p95_ms'])} ms, {summary['failed']} failed; connections per worker "
            f"{summary['connections_per_worker']}")
        for failure, times in list(summary["failures"].items())[:5]:
            log(f"  {times} x {failure}")
    info["reconnects"] = sum(c.reconnects for c in clients)
    return summaries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG,
                        help="a PostgreSQL URL whose role may CREATE DATABASE (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--random-page-cost", type=float, default=0.0,
                        help="set on the database, e.g. 1.1 (default: the server's setting)")
    parser.add_argument("--list", type=int, default=2000)
    parser.add_argument("--detail", type=int, default=2000)
    parser.add_argument("--create", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200, help="reads of each kind before measuring")
    parser.add_argument("--create-warmup", type=int, default=40)
    parser.add_argument("--web-args", default="", help="more `nullops web` options, e.g. '--workers 4'")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=0.1,
                        help="before each operation, wait until other processes use at most this share "
                             "of the machine (default: %(default)s)")
    parser.add_argument("--quiet-timeout", type=float, default=600.0,
                        help="seconds to wait for that at most, then measure anyway")
    parser.add_argument("--keep", action="store_true", help="leave the database (its URL is printed)")
    parser.add_argument("--workdir", type=Path, help="keep the web tier's log here (default: a temp dir)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m benchmarks.api_latency"
    for flag in ("nodes", "projects", "deployments", "clients", "random_page_cost", "list", "detail",
                 "create", "warmup", "create_warmup", "web_args"):
        value = getattr(args, flag)
        if value != parser.get_default(flag):
            command += f" --{flag.replace('_', '-')} {value!r}" if isinstance(value, str) \
                else f" --{flag.replace('_', '-')} {value}"
    web_args = args.web_args.split()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from app.crypto import KeyRing

    key = secrets.token_bytes(32)
    database = Database(args.pg, args.random_page_cost)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update(NULLOPS_DATABASE_URL=database.url, NULLOPS_SECRET_KEY=base64.b64encode(key).decode(),
               NULLOPS_SESSION_SECRET=secrets.token_urlsafe(48),
               NULLOPS_CONTROLLER_INTERNAL="127.0.0.1:0")
    seeder = server = None
    try:
        database.create()
        log(f"database {database.name}: upgrading")
        subprocess.run([NULLOPS, "db", "upgrade"], cwd=ROOT, env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        seeder = Seeder(database.url, KeyRing(key), random.Random(args.seed))
        info = seeder.seed(args.nodes, args.projects, args.deployments)
        seeded = (f"{args.nodes} nodes, {args.projects} projects, {args.deployments:,} deployments "
                  f"({info['deleted']:,} deleted)")
        log(f"seeded {seeded} in {time.monotonic() - t0:.1f} s")
        with tempfile.TemporaryDirectory(prefix="api-latency-") as tmp:
            workdir = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            server = WebServer(env, workdir, web_args, database.name)
            try:
                summaries = measure(server, info, seeder, args)
            finally:
                server.stop()
        created = database.one("SELECT count(*) FROM deployments WHERE name LIKE 'bench-%%'")[0]
        nodes_used = database.one("SELECT count(DISTINCT node_id) FROM deployments "
                                  "WHERE name LIKE 'bench-%%' OR name LIKE 'warm-%%'")[0]
        log(f"created {created} deployments in the measured phase, placed on {nodes_used} nodes "
            f"(warm-up included); {info['reconnects']} reconnects")
        machine_line = machine(database, web_args)
    finally:
        if seeder is not None:
            seeder.dispose()
        if args.keep and database.created:
            log(f"kept the database: {database.url}")
            database.created = False
        else:
            database.drop()
    text_ = block(summaries, command, machine_line, seeded)
    print(text_)
    if args.json:
        args.json.write_text(json.dumps({"summaries": summaries, "created": created, "nodes_used": nodes_used,
                                         "listed_total": info["listed_total"]}, indent=2))
    if not args.no_docs:
        write_docs(args.docs, text_)
        log(f"written into {args.docs}")
    return 1 if any(missed(s) for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
