"""sql-script: runs a SQL script (inline, or fetched from an http(s) URL) against a PostgreSQL
connection URL, in ONE transaction: every statement is committed, or none is. Rollback is a
no-op (a failed script left nothing behind; undoing a finished one is the database's owner's
business, e.g. the postgres-database step's rollback drops the whole database).

NullOps plugin contract (docs/plugins.md): one JSON document on stdin, one JSON object on
stdout, the log on stderr, exit 0 on success. Exit 2: invalid parameters or script; exit 1:
the script failed or the server could not be reached. The URL and its password are never
printed.
"""
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import psycopg2
from statements import ScriptError, check_single_transaction, split

NAME = "sql-script"
MAX_SCRIPT_BYTES = 16 * 1024 * 1024
FETCH_TIMEOUT_S = 30
PERMANENT = ("authentication failed", "no pg_hba.conf entry", "does not exist", "invalid")
_hidden = []                   # secret values scrubbed from every message


class Failure(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def say(message):
    for value in sorted(_hidden, key=len, reverse=True):
        message = message.replace(value, "[redacted]")
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)


def _seconds(params, key, default, low, high):
    value = params.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)  # a `${...}` reference arrives as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Failure(f"params.{key} must be a number of seconds from {low} to {high}", 2)
    return value


def parse(params):
    if not isinstance(params, dict):
        raise Failure("params must be a JSON object", 2)
    url = params.get("url")
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise Failure("params.url must be a postgresql://user:password@host:port/database URL "
                      "(e.g. ${steps.mkdb.outputs.url})", 2)
    _hidden.append(url)
    try:
        if urlsplit(url).password:
            _hidden.append(urlsplit(url).password)
    except ValueError:
        raise Failure("params.url is not a valid URL", 2) from None
    has_sql, has_url = "sql" in params, "sql_url" in params
    if has_sql == has_url:
        raise Failure("give exactly one of params.sql (the script) and params.sql_url (where to "
                      "fetch it)", 2)
    if has_sql and not isinstance(params["sql"], str):
        raise Failure("params.sql must be a string", 2)
    if has_url and not (isinstance(params["sql_url"], str)
                        and params["sql_url"].startswith(("http://", "https://"))):
        raise Failure("params.sql_url must be an http:// or https:// URL", 2)
    return {"url": url, "sql": params.get("sql"), "sql_url": params.get("sql_url"),
            "timeout_s": _seconds(params, "timeout_s", 120, 1, 24 * 3600),
            "wait_s": _seconds(params, "wait_s", 30, 0, 3600)}


def shown(url):
    """scheme://host/path: no credentials or query (a signed URL's token) in the log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def fetch(url):
    request = urllib.request.Request(url, headers={"User-Agent": f"nullops-{NAME}"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            body = response.read(MAX_SCRIPT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise Failure(f"fetching the script from {shown(url)} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Failure(f"fetching the script from {shown(url)} failed: "
                      f"{getattr(exc, 'reason', None) or exc}") from None
    if len(body) > MAX_SCRIPT_BYTES:
        raise Failure(f"the script at {shown(url)} is larger than {MAX_SCRIPT_BYTES // 2**20} MiB", 2)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Failure(f"the script at {shown(url)} is not UTF-8 text ({exc})", 2) from None
    say(f"fetched {len(body)} bytes from {shown(url)}")
    return text


def connect(url, wait_s):
    deadline = time.monotonic() + wait_s
    attempts = 0
    while True:
        attempts += 1
        try:
            return psycopg2.connect(url, connect_timeout=5, application_name=NAME)
        except psycopg2.OperationalError as exc:
            error = str(exc).strip()
            if any(part in error for part in PERMANENT) or time.monotonic() >= deadline:
                raise Failure(f"cannot connect after {attempts} attempt(s): {error}") from None
            if attempts == 1:
                say(f"waiting for the server ({error.splitlines()[0]})")
            time.sleep(0.5)
        except psycopg2.ProgrammingError as exc:  # a URL libpq cannot parse
            raise Failure(f"params.url is not a usable connection URL: {str(exc).strip()}", 2) from None


def describe(exc, statement, line):
    diag = exc.diag
    where = line
    if diag.statement_position:
        where = line + statement[:int(diag.statement_position) - 1].count("\n")
    text = diag.message_primary or str(exc).strip().splitlines()[0]
    extra = "; ".join(part for part in (diag.message_detail, diag.message_hint) if part)
    return where, text + (f" ({extra})" if extra else "")


def execute(p, statements):
    conn = connect(p["url"], p["wait_s"])
    timed_out = threading.Event()

    def stop():
        timed_out.set()
        conn.cancel()  # the running statement fails with "canceling statement due to user request"

    timer = threading.Timer(p["timeout_s"], stop)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    try:
        with conn.cursor() as cur:  # psycopg2 opens the transaction before the first statement
            for number, (statement, line) in enumerate(statements, 1):
                try:
                    cur.execute(statement)
                except psycopg2.Error as exc:
                    conn.rollback()
                    if timed_out.is_set():
                        raise Failure(f"the script did not finish within {p['timeout_s']:g} s (stopped in "
                                      f"statement {number}, line {line}); nothing was committed") from None
                    where, why = describe(exc, statement, line)
                    raise Failure(f"statement {number} (line {where}) failed: {why}; nothing was "
                                  "committed") from None
                finally:
                    for notice in conn.notices:
                        say(f"server: {notice.strip()}")
                    conn.notices.clear()
        try:
            conn.commit()
        except psycopg2.Error as exc:  # deferred constraints are checked here
            raise Failure(f"commit failed: {str(exc).strip()}; nothing was committed") from None
    finally:
        timer.cancel()
        conn.close()
    return time.monotonic() - started


def main():
    try:
        data = json.load(sys.stdin)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise Failure(f"stdin must be one JSON object: {exc}", 2) from None
    action = data.get("action")
    if action == "rollback":
        say("nothing to roll back: a failed script committed nothing")
        return {}
    if action != "run":
        raise Failure(f"unknown action {action!r} (run or rollback)", 2)
    p = parse(data.get("params") or {})
    text = fetch(p["sql_url"]) if p["sql_url"] else p["sql"]
    try:
        statements = split(text)
        check_single_transaction(statements)
    except ScriptError as exc:
        raise Failure(f"the script cannot run: {exc}", 2) from None
    took = execute(p, statements)
    say(f"committed {len(statements)} statement(s) in {took:.2f} s")
    return {"statements": len(statements)}


if __name__ == "__main__":
    try:
        output = main()
    except Failure as exc:
        say(str(exc))
        sys.exit(exc.code)
    json.dump(output, sys.stdout)
