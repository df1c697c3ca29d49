"""Page latency: the browser pages (and the JSON the pages' islands fetch) under `nullops web`
on the database of benchmarks/api_latency.py: 500 online nodes, 200 projects, 10,000
deployments, a non-admin user whose team has Full Access on every project and the
environment, and an admin.

8 client threads, each logged in through the real login form with its own session cookie and
keep-alive connection (spread evenly over the gunicorn workers), request pages back to back: a
warm-up, then N requests of each page kind. Latency is from sending the request to the last
byte of the answer, on loopback, so it is the server's time plus well under a millisecond.

Run from the repository root (PostgreSQL on 127.0.0.1 with the `nullops_test` role):

    .venv/bin/python -m benchmarks.page_latency

It creates its own database and drops it at the end; the table is printed and written into
docs/benchmarks.md (section "Page latency", between its markers) unless --no-docs.

2,000 of the seeded deployments get a longer history first (40 restarts and failed steps of
older runs and 20 more step events each), which the deployment page's live state reads.
"""
import argparse
import base64
import datetime
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from benchmarks.api_latency import (
    DEFAULT_PG,
    NULLOPS,
    ROOT,
    Client,
    Database,
    Seeder,
    WebServer,
    fmt,
    log,
    machine,
    run_phase,
    speed_check_ms,
    summarise,
    wait_for_quiet,
    write_docs,
)

SECTION = "## Page latency"
BEGIN, END = "<!-- page_latency:begin -->", "<!-- page_latency:end -->"
TARGET_MS = 50
PASSWORD = "bench-" + secrets.token_urlsafe(12)
HISTORY_DEPLOYMENTS, EXTRA_EVENTS = 2000, 40


class PageClient(Client):
    """One keep-alive connection with a logged-in browser session (its cookie)."""

    def __init__(self, port):
        super().__init__(port)
        self.headers = {"Accept": "text/html,application/json"}

    def login(self, username, password):
        status, page, _ = self.call("GET", "/login")
        token = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)
        if status != 200 or not token:
            raise RuntimeError(f"GET /login answered {status} without a CSRF token")
        status, data, _ = self.call("POST", "/login", form={
            "csrf_token": token.group(1).decode(), "username": username, "password": password})
        if status != 302:
            raise RuntimeError(f"logging in as {username} answered {status}: {data[:300]!r}")


def seed_history(seeder, deployment_ids, rng):
    """Restarts and failed steps of older runs, and more step events, for some deployments."""
    rows = []
    for deployment_id in rng.sample(deployment_ids, min(HISTORY_DEPLOYMENTS, len(deployment_ids))):
        for n in range(EXTRA_EVENTS):
            if n % 2:
                rows.append({"deployment_id": deployment_id, "kind": "restart", "message": "restarted web",
                             "data": {"steps": ["web"]}})
            else:
                rows.append({"deployment_id": deployment_id, "kind": "step", "message": "web failed",
                             "data": {"run_id": f"old-{n}", "step_id": "web", "step_status": "failed",
                                      "message": "not ready"}})
        rows += [{"deployment_id": deployment_id, "kind": "step", "message": f"step {n}",
                  "data": {"run_id": "x", "step_id": "db", "step_status": "done"}} for n in range(20)]
    with seeder.engine.begin() as conn:
        conn.execute(text("INSERT INTO deployment_events (deployment_id, at, kind, message, data) "
                          "VALUES (:deployment_id, now(), :kind, :message, CAST(:data AS json))"),
                     [{**r, "data": json.dumps(r["data"])} for r in rows])
        conn.execute(text("ANALYZE deployment_events"))


def set_passwords(seeder, info):
    """The benchmark user gets a password and an admin is added (the seed has neither)."""
    from argon2 import PasswordHasher

    hashed = PasswordHasher().hash(PASSWORD)  # the standard parameters, as the app verifies them
    with seeder.engine.begin() as conn:
        user = conn.execute(text(
            "SELECT username FROM users WHERE role = 'user' ORDER BY id LIMIT 1")).scalar()
        conn.execute(text("UPDATE users SET password_hash = :h WHERE username = :u"),
                     {"h": hashed, "u": user})
        conn.execute(text(
            "INSERT INTO users (username, full_name, role, password_hash, session_nonce, is_active, "
            "created_at) VALUES ('bench-admin', 'Bench Admin', 'admin', :h, :n, true, now())"),
            {"h": hashed, "n": secrets.token_hex(16)})
        node_id = conn.execute(text("SELECT id FROM nodes ORDER BY id LIMIT 1")).scalar()
    info.update(user=user, node_id=node_id)


def pages(info):
    """Every page kind: (name, who asks, make(i, rng) -> request) in the order measured."""
    deployments, projects = info["deployment_ids"], info["project_ids"]
    environment = info["environment_id"]

    def get(name, path):
        return name, "GET", path, None, 200

    return [
        ("overview", "user", lambda i, rng: get("overview", "/")),
        ("deployments", "user", lambda i, rng: get("deployments", (
            f"/deployments?page={rng.randint(1, 4)}", f"/deployments?project_id={rng.choice(projects)}",
            f"/deployments?status=ready&page={rng.randint(1, 4)}")[i % 3])),
        ("deployment", "user", lambda i, rng: get("deployment", f"/deployments/{rng.choice(deployments)}")),
        ("deployment status", "user", lambda i, rng: get(
            "deployment status", f"/deployments/{rng.choice(deployments)}/status")),
        ("deployment history", "user", lambda i, rng: get(
            "deployment history", f"/deployments/{rng.choice(deployments)}/history")),
        ("deployment live", "user", lambda i, rng: get(
            "deployment live", f"/api/v1/deployments/{rng.choice(deployments)}/live")),
        ("pipeline", "user", lambda i, rng: get("pipeline", f"/projects/{rng.choice(projects)}/pipeline")),
        ("pipeline editor data", "admin", lambda i, rng: get(
            "pipeline editor data", f"/api/v1/projects/{rng.choice(projects)}/pipeline/editor")),
        ("environment", "user", lambda i, rng: get("environment", f"/environments/{environment}")),
        ("node", "admin", lambda i, rng: get("node", f"/nodes/{info['node_id']}")),
        ("new deployment", "user", lambda i, rng: get("new deployment", "/deployments/new")),
    ]


def measure(server, info, args):
    summaries = []
    for seed, (name, who, make) in enumerate(pages(info), start=1):
        if args.only and name not in args.only:
            continue
        clients = [PageClient(server.port) for _ in range(args.clients)]
        username = info["user"] if who == "user" else "bench-admin"
        for client in clients:
            client.login(username, PASSWORD)
        status, data, _ = clients[0].call(*make(0, random.Random(0))[1:4])
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {data[:300]!r}")
        wait_for_quiet(args.quiet, args.quiet_timeout)
        speed = speed_check_ms()
        server.connect_evenly(clients)
        run_phase(server, clients, make, args.warmup, seed + 100)
        results, wall, cpu = run_phase(server, clients, make, args.requests, seed)
        summary = summarise(name, results, wall, cpu)
        summary.update(speed_check_ms=speed, who=who)
        summaries.append(summary)
        log(f"{name}: {args.requests} requests in {wall:.1f} s, p50 {fmt(summary['p50_ms'])} ms, "
            f"p95 {fmt(summary['p95_ms'])} ms, {summary['failed']} failed")
        for failure, times in list(summary["failures"].items())[:3]:
            log(f"  {times} x {failure}")
    return summaries


def missed(summary):
    return summary["failed"] > 0 or summary["p95_ms"] is None or summary["p95_ms"] >= TARGET_MS


def table(summaries):
    cores = os.cpu_count() or 1
    lines = ["| page | as | requests | failed | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | requests/s "
             "| web CPU per request (ms) | PostgreSQL CPU per request (ms) | other processes (% of "
             f"{cores} cores) | target p95 < {TARGET_MS} ms |", "|---" * 13 + "|"]
    for s in summaries:
        n, capacity = s["requests"] or 1, s["wall_s"] * cores / 100
        lines.append(
            f"| {s['operation']} | {s['who']} | {s['requests']:,} | {s['failed']} | {fmt(s['p50_ms'])} "
            f"| {fmt(s['p95_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['max_ms'])} | {fmt(s['per_s'], 0)} "
            f"| {fmt(1000 * s['web_cpu_s'] / n)} | {fmt(1000 * s['postgres_cpu_s'] / n)} "
            f"| {s['other_cpu_s'] / capacity:.0f} | {'missed' if missed(s) else 'met'} |")
    return "\n".join(lines)


def block(summaries, command, machine_line, seeded):
    misses = [s["operation"] for s in summaries if missed(s)]
    verdict = (f"Target (p95 under {TARGET_MS} ms for every page, none failed): "
               + ("**met**." if not misses else f"**NOT met** for {', '.join(misses)}."))
    return "\n".join([BEGIN, f"`{command}` ({datetime.date.today().isoformat()}; {machine_line}; "
                             f"seeded: {seeded})", "", table(summaries), "", verdict, END])


SECTION_TEXT = f"""{SECTION}

The pages a browser asks for, under `nullops web` as an operator starts it, on the database of
the API latency benchmark above (500 online nodes, 200 projects, 10,000 deployments, a
non-admin user with Full Access on every project and the environment). 8 client threads, each
logged in through the login form with its own session and keep-alive connection, request one
kind of page back to back (after a warm-up); "as" says whether that user or an admin asks.
Pages with a random id pick among all seeded deployments and projects. Latency is on loopback
from the request to the last byte: the server's time plus well under a millisecond.

"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800, help="measured requests per page kind")
    parser.add_argument("--warmup", type=int, default=80)
    parser.add_argument("--only", nargs="*", help="page kinds to measure (default: all)")
    parser.add_argument("--quiet", type=float, default=0.1)
    parser.add_argument("--quiet-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the database (its URL is printed)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--web-args", default="", help="more `nullops web` options, e.g. '--workers 4'")
    args = parser.parse_args(argv)
    command = ".venv/bin/python -m benchmarks.page_latency"
    for flag in ("nodes", "projects", "deployments", "clients", "requests"):
        if getattr(args, flag) != parser.get_default(flag):
            command += f" --{flag} {getattr(args, flag)}"
    web_args = args.web_args.split()
    if web_args:
        command += f" --web-args '{args.web_args}'"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from app.crypto import KeyRing

    key = secrets.token_bytes(32)
    database = Database(args.pg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NULLOPS_")}
    env.update(NULLOPS_DATABASE_URL=database.url, NULLOPS_SECRET_KEY=base64.b64encode(key).decode(),
               NULLOPS_SESSION_SECRET=secrets.token_urlsafe(48),
               NULLOPS_CONTROLLER_INTERNAL="127.0.0.1:0")
    seeder = server = None
    try:
        database.create()
        subprocess.run([NULLOPS, "db", "upgrade"], cwd=ROOT, env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        seeder = Seeder(database.url, KeyRing(key), random.Random(args.seed))
        info = seeder.seed(args.nodes, args.projects, args.deployments)
        set_passwords(seeder, info)
        seed_history(seeder, info["deployment_ids"], random.Random(args.seed))
        seeded = (f"{args.nodes} nodes, {args.projects} projects, {args.deployments:,} deployments "
                  f"({info['deleted']:,} deleted)")
        log(f"seeded {seeded} in {time.monotonic() - t0:.1f} s")
        with tempfile.TemporaryDirectory(prefix="page-latency-") as tmp:
            server = WebServer(env, Path(tmp), web_args, database.name)
            try:
                summaries = measure(server, info, args)
            finally:
                server.stop()
        machine_line = machine(database, web_args)
    finally:
        if seeder is not None:
            seeder.dispose()
        if args.keep and database.created:
            log(f"kept the database: {database.url} (NULLOPS_SECRET_KEY={env['NULLOPS_SECRET_KEY']}; "
                f"log in as {info['user']} or bench-admin with {PASSWORD})")
            database.created = False
        else:
            database.drop()
    text_ = block(summaries, command, machine_line, seeded)
    print(text_)
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))
    if not args.no_docs and not args.only:
        write_docs(args.docs, text_, BEGIN, END, SECTION_TEXT)
        log(f"written into {args.docs}")
    return 1 if any(missed(s) for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
