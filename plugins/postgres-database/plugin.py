"""postgres-database: a role with a generated password and a database it owns, on a PostgreSQL
server (typically the deployment's own PostgreSQL service). Outputs the connection URL and the
password as secret outputs. `rollback` drops the database and the role.

On a server shared by deployments (issue 17 item 4), one deployment must never reset another's
role password nor drop its database. So by default (`scope: deployment`) both names end with
the deployment's id, and whatever the scope, the plugin marks what it creates (a COMMENT naming
the deployment) and refuses to reuse, change or drop a role or database that does not carry
its own deployment's mark.

NullOps plugin contract (docs/plugins.md): one JSON document on stdin, one JSON object on
stdout, the log on stderr, exit 0 on success. Exit 2: invalid parameters; exit 1: the server
refused or could not be reached. Secret values never reach stdout (except the declared secret
outputs) or stderr.
"""
import base64
import hashlib
import hmac
import json
import re
import secrets
import sys
import time
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

NAME = "postgres-database"
MARK = "nullops postgres-database deployment="   # COMMENT ON ROLE/DATABASE: who created it
DEPLOYMENT_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_NAME_BYTES = 63            # PostgreSQL cuts longer identifiers silently: refuse them instead
ROLLBACK_WAIT_S = 10
# Connection failures that waiting does not cure: fail at once instead of retrying.
PERMANENT = ("authentication failed", "no pg_hba.conf entry", "does not exist")
_hidden = []                   # secret values scrubbed from every message


class Failure(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def say(message):
    for value in _hidden:
        message = message.replace(value, "[redacted]")
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)


def _name(params, key, default=None):
    value = params.get(key, default)
    if not isinstance(value, str) or not value or "\0" in value:
        raise Failure(f"params.{key} must be a non-empty string", 2)
    if len(value.encode()) > MAX_NAME_BYTES:
        raise Failure(f"params.{key} is longer than {MAX_NAME_BYTES} bytes (PostgreSQL's limit)", 2)
    return value


def _scoped(p, deployment_id):
    """Names with the deployment's id appended (scope: deployment), checked against the limit."""
    if p["scope"] == "none":
        return p
    suffix = f"_{deployment_id}"
    for key in ("database", "user"):
        room = MAX_NAME_BYTES - len(suffix)
        if len(p[key].encode()) > room:
            raise Failure(f"params.{key} is longer than {room} bytes: with scope \"deployment\" the "
                          f"deployment's id is appended ({suffix!r}) within PostgreSQL's {MAX_NAME_BYTES}", 2)
        p[key] = p[key] + suffix
    return p


def parse(params, deployment=None):
    if not isinstance(params, dict):
        raise Failure("params must be a JSON object", 2)
    deployment_id = (deployment or {}).get("id") if isinstance(deployment, dict) else None
    if not isinstance(deployment_id, str) or not DEPLOYMENT_ID.match(deployment_id):
        raise Failure("the input's deployment.id must be a DNS label (the agent sends it)", 2)
    if params.get("scope", "deployment") not in ("deployment", "none"):
        raise Failure('params.scope must be "deployment" or "none"', 2)
    port = params.get("port", 5432)
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # `${services.db.port}` arrives as a string
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Failure("params.port must be a port number (1-65535)", 2)
    password = params.get("admin_password")
    if password is not None and not isinstance(password, str):
        raise Failure("params.admin_password must be a string (use ${secrets.NAME})", 2)
    if password:
        _hidden.append(password)
    wait_s = params.get("wait_s", 60)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 <= wait_s <= 3600:
        raise Failure("params.wait_s must be a number of seconds from 0 to 3600", 2)
    if params.get("if_exists", "reuse") not in ("reuse", "fail"):
        raise Failure('params.if_exists must be "reuse" or "fail"', 2)
    database = _name(params, "database")
    p = {
        "host": _name(params, "host"), "port": port, "admin_password": password or None,
        "admin_user": _name(params, "admin_user", "postgres"),
        "admin_database": _name(params, "admin_database", "postgres"),
        "database": database, "user": _name(params, "user", database),
        "if_exists": params.get("if_exists", "reuse"), "wait_s": wait_s,
        "scope": params.get("scope", "deployment"), "mark": MARK + deployment_id,
    }
    if p["user"] == p["admin_user"]:
        raise Failure("params.user must not be the admin user: the rollback drops it", 2)
    return _scoped(p, deployment_id)


def connect(p, wait_s):
    """A connection as the admin; retried while the server starts (refused, starting up)."""
    deadline = time.monotonic() + wait_s
    attempts = 0
    while True:
        attempts += 1
        try:
            conn = psycopg2.connect(host=p["host"], port=p["port"], user=p["admin_user"],
                                    password=p["admin_password"], dbname=p["admin_database"],
                                    connect_timeout=5, application_name=NAME)
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            return conn
        except psycopg2.OperationalError as exc:
            error = str(exc).strip()
            if any(part in error for part in PERMANENT) or time.monotonic() >= deadline:
                raise Failure(f"cannot connect to {p['host']}:{p['port']} as {p['admin_user']} "
                              f"after {attempts} attempt(s): {error}") from None
            if attempts == 1:
                say(f"waiting for {p['host']}:{p['port']} ({error.splitlines()[0]})")
            time.sleep(0.5)


def scram_verifier(password, iterations=4096):
    """The SCRAM-SHA-256 secret PostgreSQL stores: the password itself never travels in SQL,
    so it cannot land in the server's statement log."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def one(cur, query, *args):
    cur.execute(query, args)
    return cur.fetchone()


def _refuse_foreign(kind, name, mark, p):
    """A role or database this deployment's step did not create is never reused or changed."""
    if mark != p["mark"]:
        who = "another deployment" if (mark or "").startswith(MARK) else "something other than NullOps"
        raise Failure(f"{kind} {name!r} exists and was created by {who}: postgres-database changes "
                      "only what it created for this deployment (choose another name, or keep "
                      "scope \"deployment\")")


def create(p):
    password = secrets.token_urlsafe(24)  # URL-safe: the URL needs no escaping for it
    _hidden.append(password)
    role, database = sql.Identifier(p["user"]), sql.Identifier(p["database"])
    conn = connect(p, p["wait_s"])
    with conn.cursor() as cur:  # not `with conn`: that would open a transaction
        existing = one(cur, "SELECT rolsuper OR rolcreaterole, shobj_description(oid, 'pg_authid') "
                            "FROM pg_roles WHERE rolname = %s", p["user"])
        owner = one(cur, "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') "
                         "FROM pg_database WHERE datname = %s", p["database"])
        admin_is_superuser = one(cur, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0]
        # Every refusal comes before the first change.
        if p["if_exists"] == "fail" and (existing or owner):
            what = f"role {p['user']!r}" if existing else f"database {p['database']!r}"
            raise Failure(f"{what} already exists (if_exists is \"fail\")")
        if existing and existing[0]:
            raise Failure(f"role {p['user']!r} exists with superuser or createrole rights: "
                          "choose another user")
        if existing:
            _refuse_foreign("role", p["user"], existing[1], p)
        if owner:
            _refuse_foreign("database", p["database"], owner[1], p)
        verb = "ALTER" if existing else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD %s").format(role),
                    (scram_verifier(password),))
        cur.execute(sql.SQL("COMMENT ON ROLE {} IS %s").format(role), (p["mark"],))
        if not admin_is_superuser:  # a CREATEROLE admin must be a member to create its database
            cur.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        say(f"{'reused role' if existing else 'created role'} {p['user']!r} with a new password")
        if owner:
            if owner[0] != p["user"]:
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, role))
            say(f"reused database {p['database']!r}, now owned by {p['user']!r}")
        else:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
            say(f"created database {p['database']!r} owned by {p['user']!r}")
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(database), (p["mark"],))
        # Other roles of the server (other deployments' users) cannot even connect to it.
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
    conn.close()
    host = f"[{p['host']}]" if ":" in p["host"] else p["host"]
    url = (f"postgresql://{quote(p['user'], safe='')}:{password}@{host}:{p['port']}/"
           f"{quote(p['database'], safe='')}")
    return {"url": url, "password": password, "database": p["database"], "user": p["user"],
            "host": p["host"], "port": p["port"], "secret_outputs": ["url", "password"]}


def drop(p):
    """Drops the database and the role only when they carry this deployment's mark; another's
    (or one NullOps did not make) is left alone and the rollback still succeeds."""
    conn = connect(p, min(p["wait_s"], ROLLBACK_WAIT_S))
    checks = {
        "database": ("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                     # FORCE (PostgreSQL 13+): the deployment's application may still be connected.
                     sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), p["database"]),
        "role": ("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                 sql.SQL("DROP ROLE IF EXISTS {}"), p["user"]),
    }
    done = {}
    with conn.cursor() as cur:
        for kind, (find, statement, name) in checks.items():  # the database first: the role owns it
            found = one(cur, find, name)
            if found is None:
                done[kind] = "was already gone"
            elif found[0] != p["mark"]:
                done[kind] = "was left alone (not created for this deployment)"
            else:
                cur.execute(statement.format(sql.Identifier(name)))
                done[kind] = "dropped"
    conn.close()
    say(f"database {p['database']!r} {done['database']}, role {p['user']!r} {done['role']}")
    return {"dropped_database": done["database"] == "dropped", "dropped_user": done["role"] == "dropped"}


def main():
    try:
        data = json.load(sys.stdin)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise Failure(f"stdin must be one JSON object: {exc}", 2) from None
    p = parse(data.get("params") or {}, data.get("deployment"))
    action = data.get("action")
    if action == "run":
        return create(p)
    if action == "rollback":
        return drop(p)
    raise Failure(f"unknown action {action!r} (run or rollback)", 2)


if __name__ == "__main__":
    try:
        output = main()
    except Failure as exc:
        say(str(exc))
        sys.exit(exc.code)
    except psycopg2.Error as exc:
        say(f"the server refused: {str(exc).strip()}")
        sys.exit(1)
    json.dump(output, sys.stdout)
