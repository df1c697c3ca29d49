"""postgres-database against one PostgreSQL server shared by deployments (issue 17 item 4): with
the default `if_exists: reuse`, deployment B must not reset A's role password nor drop A's
database, whatever names the two pipelines use.

The plugin runs as the agent runs it (one JSON document on stdin) but on the host, against the
real server on 127.0.0.1:5432, as `nullops_plugin_admin` (CREATEDB CREATEROLE, not a superuser,
as on a managed server; scripts/test-host.sh makes it). Every name starts with a prefix of this
test, and everything with the prefix is dropped afterwards.
"""
import json
import pathlib
import subprocess
import sys
import uuid

import psycopg2
import pytest
from psycopg2 import sql

PLUGIN = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "postgres-database" / "plugin.py"
SERVER = {"host": "127.0.0.1", "port": 5432}
ADMIN = {"user": "nullops_plugin_admin", "password": "nullops_plugin_admin"}


def _admin_connection():
    try:
        conn = psycopg2.connect(**SERVER, **ADMIN, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no {ADMIN['user']} role on 127.0.0.1:5432 (run scripts/test-host.sh): {exc}")
    conn.autocommit = True
    return conn


@pytest.fixture
def prefix():
    """`nullops_pgshare_<hex>`: this test's names; all of them are dropped at the end."""
    name = f"nullops_pgshare_{uuid.uuid4().hex[:8]}"
    conn = _admin_connection()
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            like = (name.replace("_", r"\_") + "%",)
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", like)
            for (database,) in cur.fetchall():
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            cur.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", like)
            for (role,) in cur.fetchall():
                cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        conn.close()


def run(deployment_id, params, action="run"):
    """(exit code, outputs or None, stderr) of one plugin run for `deployment_id`."""
    payload = {"action": action, "deployment": {"id": deployment_id, "name": deployment_id},
               "params": {"host": SERVER["host"], "port": SERVER["port"], "admin_user": ADMIN["user"],
                          "admin_password": ADMIN["password"], "wait_s": 0, **params},
               "secrets": {}, "outputs": {}, "services": {}}
    done = subprocess.run([sys.executable, str(PLUGIN)], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, (json.loads(done.stdout) if done.returncode == 0 else None), done.stderr


def can_log_in(out):
    try:
        psycopg2.connect(out["url"].replace(f"@{SERVER['host']}:", "@127.0.0.1:"), connect_timeout=5).close()
        return True
    except psycopg2.OperationalError:
        return False


def exists(kind, name):
    conn = _admin_connection()
    with conn.cursor() as cur:
        view, column = ("pg_database", "datname") if kind == "database" else ("pg_roles", "rolname")
        cur.execute(f"SELECT 1 FROM {view} WHERE {column} = %s", (name,))
        found = cur.fetchone() is not None
    conn.close()
    return found


def test_two_deployments_with_the_same_params_get_their_own_database_and_role(prefix):
    params = {"database": f"{prefix}_shop"}
    code_a, a, _ = run("dep-aaaa", params)
    code_b, b, _ = run("dep-bbbb", params)
    assert (code_a, code_b) == (0, 0)
    # scope: deployment (the default) appends the deployment's id to both names.
    assert (a["database"], a["user"]) == (f"{prefix}_shop_dep-aaaa", f"{prefix}_shop_dep-aaaa")
    assert b["database"] == f"{prefix}_shop_dep-bbbb"
    assert can_log_in(a) and can_log_in(b), "B's run reset A's password"

    code, out, _ = run("dep-bbbb", params, action="rollback")
    assert code == 0 and out == {"dropped_database": True, "dropped_user": True}
    assert exists("database", a["database"]) and can_log_in(a), "B's rollback touched A's database"
    assert not exists("database", b["database"])


def test_with_names_not_scoped_another_deployment_can_neither_reuse_nor_drop(prefix):
    params = {"database": f"{prefix}_shared", "scope": "none"}
    code, a, _ = run("dep-aaaa", params)
    assert code == 0 and a["database"] == f"{prefix}_shared"
    again_code, again, _ = run("dep-aaaa", params)  # a retry of A's own run reuses its own
    assert again_code == 0 and can_log_in(again) and not can_log_in(a)

    code, _, log = run("dep-bbbb", params)
    assert code == 1
    assert f"role '{prefix}_shared' exists and was created by another deployment" in log
    assert can_log_in(again), "B reset A's password"

    code, out, log = run("dep-bbbb", params, action="rollback")
    assert code == 0 and out == {"dropped_database": False, "dropped_user": False}
    assert "was left alone (not created for this deployment)" in log
    assert exists("database", f"{prefix}_shared") and can_log_in(again)


def test_a_database_and_role_nullops_did_not_create_are_never_taken_over_or_dropped(prefix):
    name = f"{prefix}_legacy"
    conn = _admin_connection()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'theirs'").format(sql.Identifier(name)))
        cur.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(name)))
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    conn.close()
    code, _, log = run("dep-aaaa", {"database": name, "scope": "none"})
    assert code == 1 and "created by something other than NullOps" in log
    code, _, _ = run("dep-aaaa", {"database": name, "scope": "none"}, action="rollback")
    assert code == 0 and exists("database", name) and exists("role", name)
    psycopg2.connect(**SERVER, user=name, password="theirs", dbname=name).close()  # password unchanged


def test_a_scoped_name_past_postgresqls_limit_is_refused_naming_the_room_left(prefix):
    code, _, log = run("dep-aaaa", {"database": "x" * 60})
    assert code == 2 and "params.database is longer than 54 bytes" in log
