"""The deployment page's server time (issue 15.3) on the database of benchmarks/api_latency.py
(10,000 deployments with their events, 200 projects, 500 nodes): what every open page polls
every 2 s (GET /api/v1/deployments/<id>/live), the page itself and the two parts it asks again
when the live state changed. In one process through Flask's test client (no network, no
gunicorn): the time is the server's, per request, one after another. The seeded deployments get
a longer history first (restarts and failed steps, which the live state reads), so the query
reads more than the minimum. The non-admin user of api_latency.py (Full Access through a team)
asks, so the visibility filter is in every query.

    .venv/bin/python -m benchmarks.deployment_page [--requests 500]

It prints p50/p95 per route and the live query's plan (EXPLAIN ANALYZE), and drops its
database at the end.
"""
import argparse
import base64
import json
import random
import secrets
import statistics
import subprocess
import sys
import time

from sqlalchemy import text

from benchmarks.api_latency import DEFAULT_PG, NULLOPS, ROOT, Database, Seeder, log

EXTRA_EVENTS = 40  # per seeded deployment: restarts and failed steps of older runs


def _history(seeder, deployment_ids, rng):
    rows = []
    for deployment_id in deployment_ids:
        for n in range(EXTRA_EVENTS):
            if n % 2:
                rows.append({"deployment_id": deployment_id, "kind": "restart", "message": "restarted web",
                             "data": {"steps": ["web"]}})
            else:
                rows.append({"deployment_id": deployment_id, "kind": "step", "message": "web failed",
                             "data": {"run_id": f"old-{n}", "step_id": "web", "step_status": "failed",
                                      "message": "not ready"}})
        rows += [{"deployment_id": deployment_id, "kind": "step", "message": f"step {rng.random()}",
                  "data": {"run_id": "x", "step_id": "db", "step_status": "done"}} for _ in range(20)]
    with seeder.engine.begin() as conn:
        conn.execute(text("INSERT INTO deployment_events (deployment_id, at, kind, message, data) "
                          "VALUES (:deployment_id, now(), :kind, :message, CAST(:data AS json))"),
                     [{**r, "data": json.dumps(r["data"])} for r in rows])
        conn.execute(text("ANALYZE deployment_events"))


def _timed(client, path, count, rng, ids, **kwargs):
    times = []
    for _ in range(count):
        url = path.format(id=rng.choice(ids))
        started = time.perf_counter()
        response = client.get(url, **kwargs)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    from app import create_app
    from app.config import TestConfig
    from app.crypto import KeyRing
    from app.services.passwords import hash_password

    key = secrets.token_bytes(32)
    database = Database(args.pg)
    env = {"NULLOPS_DATABASE_URL": database.url, "NULLOPS_SECRET_KEY": base64.b64encode(key).decode(),
           "NULLOPS_SESSION_SECRET": secrets.token_urlsafe(48), "NULLOPS_CONTROLLER_INTERNAL": "127.0.0.1:0",
           "PATH": "/usr/bin:/bin"}
    rng = random.Random(args.seed)
    seeder = None
    try:
        database.create()
        subprocess.run([NULLOPS, "db", "upgrade"], cwd=ROOT, env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        seeder = Seeder(database.url, KeyRing(key), rng)
        info = seeder.seed(500, 200, args.deployments)
        ids = info["deployment_ids"]
        _history(seeder, rng.sample(ids, min(2000, len(ids))), rng)
        log(f"seeded {args.deployments:,} deployments")

        app = create_app(TestConfig(environ=env))
        app.config["WTF_CSRF_ENABLED"] = False
        with app.app_context():
            from app.extensions import db

            db.session.execute(text("UPDATE users SET password_hash = :h WHERE username = 'user-000'"),
                               {"h": hash_password("bench-password-Zx81!")})
            db.session.commit()
        client = app.test_client()
        login = client.post("/login", data={"username": "user-000", "password": "bench-password-Zx81!"})
        if login.status_code != 302:
            raise RuntimeError(f"login answered {login.status_code}")
        token = {"Authorization": f"Bearer {info['token']}"}
        rows = []
        for name, path, kwargs in (
                ("GET /api/v1/deployments/<id>/live (token)", "/api/v1/deployments/{id}/live",
                 {"headers": token}),
                ("GET /api/v1/deployments/<id>/live (session)", "/api/v1/deployments/{id}/live", {}),
                ("GET /deployments/<id>/status", "/deployments/{id}/status", {}),
                ("GET /deployments/<id>/history", "/deployments/{id}/history", {}),
                ("GET /deployments/<id> (the page)", "/deployments/{id}", {})):
            _timed(client, path, 50, rng, ids, **kwargs)  # warm-up
            p50, p95 = _timed(client, path, args.requests, rng, ids, **kwargs)
            rows.append((name, p50, p95))
        print(f"\n{args.deployments:,} deployments, {args.requests} requests each, one after another\n")
        print("| route | p50 (ms) | p95 (ms) |\n|---|---|---|")
        for name, p50, p95 in rows:
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
        with app.app_context():
            from app.extensions import db
            from app.services import deployment_health

            query = deployment_health._query(False, "postgresql")
            compiled = query.compile(db.engine)
            plan = db.session.connection().exec_driver_sql(
                f"EXPLAIN ANALYZE {compiled}", {**compiled.params, "deployment_id": ids[0]})
            print("\nEXPLAIN ANALYZE of the live query:\n" + "\n".join(row[0] for row in plan))
    finally:
        if seeder is not None:
            seeder.engine.dispose()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
