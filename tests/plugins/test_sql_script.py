"""plugins/sql-script, run as the agent runs it: a script inline or fetched over HTTP runs in
one transaction (all or nothing), errors name the statement and line, the deadline cancels,
and the connection URL's password is never printed."""
from urllib.parse import quote

import pytest

from agent.errors import PluginError

from .conftest import ADMIN_PASSWORD, query

pytestmark = pytest.mark.docker

SCRIPT = """-- a schema and seed data, with what a naive split on ';' gets wrong
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO items (name) VALUES ('semi;colon'), ('it''s'), (E'back\\\\slash;'), ($$dollar;$$);
CREATE FUNCTION shout(t text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN upper(t) || '!';  -- a ';' inside the body
END;
$body$;
/* a /* nested */ comment; */
DO $$ BEGIN RAISE NOTICE 'seeded % items', (SELECT count(*) FROM items); END $$;
"""


def url(user="postgres", password=ADMIN_PASSWORD, database="postgres"):
    return f"postgresql://{user}:{quote(password, safe='')}@db:5432/{database}"


def fails(deployment, params, **kwargs):
    with pytest.raises(PluginError) as caught:
        deployment.plugin("sql-script", params, **kwargs)
    return caught.value


def test_an_inline_script_commits_every_statement_and_counts_them(deployment):
    port = deployment.postgres()
    result = deployment.plugin("sql-script", {"url": url(), "sql": SCRIPT})
    assert result.output == {"statements": 4}
    assert query(port, "SELECT name FROM items ORDER BY id") == [
        ("semi;colon",), ("it's",), ("back\\slash;",), ("dollar;",)]
    assert query(port, "SELECT shout('hi')") == [("HI!",)]
    log = "\n".join(result.log)
    assert "server: NOTICE:  seeded 4 items" in log
    assert "committed 4 statement(s)" in log
    assert ADMIN_PASSWORD not in log


def test_a_failing_statement_leaves_nothing_behind(deployment):
    port = deployment.postgres()
    error = fails(deployment, {"url": url(), "sql": (
        "CREATE TABLE items (name text);\n"
        "INSERT INTO items VALUES ('apple');\n"
        "CREATE TABLE other (x int);\n"
        "INSERT INTO itemz VALUES ('typo');\n"
        "INSERT INTO items VALUES ('never');")})
    assert ('statement 4 (line 4) failed: relation "itemz" does not exist; nothing was committed'
            in error.message)
    assert query(port, "SELECT count(*) FROM pg_tables WHERE tablename IN ('items', 'other')") == [(0,)]


def test_a_script_fetched_over_http_runs_and_a_missing_one_fails(deployment, busybox_image):
    port = deployment.postgres()
    serve = 'mkdir -p /www && printf "%s" "$SQL" > /www/seed.sql && exec httpd -f -p 8080 -h /www'
    seed = "CREATE TABLE fetched (x int);\nINSERT INTO fetched VALUES (1), (2);\n"
    deployment.service("files", busybox_image, env={"SQL": seed},
                       command=["sh", "-c", serve], readiness_check={"type": "tcp", "port": 8080})
    result = deployment.plugin("sql-script", {"url": url(), "sql_url": "http://files:8080/seed.sql?token=abc"})
    assert result.output == {"statements": 2}
    assert query(port, "SELECT sum(x) FROM fetched") == [(3,)]
    assert f"fetched {len(seed)} bytes from http://files:8080/seed.sql" in "\n".join(result.log)
    assert "token=abc" not in "\n".join(result.log)

    error = fails(deployment, {"url": url(), "sql_url": "http://files:8080/missing.sql"})
    assert "fetching the script from http://files:8080/missing.sql failed: HTTP 404" in error.message


def test_past_its_deadline_the_running_statement_is_cancelled_and_nothing_committed(deployment):
    port = deployment.postgres()
    error = fails(deployment, {"url": url(), "timeout_s": 1,
                               "sql": "CREATE TABLE slow (x int);\nSELECT pg_sleep(30);"})
    assert ("did not finish within 1 s (stopped in statement 2, line 2); nothing was committed"
            in error.message)
    assert query(port, "SELECT count(*) FROM pg_tables WHERE tablename = 'slow'") == [(0,)]


def test_transaction_control_is_refused_before_connecting(deployment):
    # No server at all: refusing the script is the first thing it does, before connecting.
    script = "CREATE TABLE a (x int);\nCOMMIT;\nCREATE TABLE b (x int);"
    error = fails(deployment, {"url": url(), "sql": script, "wait_s": 0})
    assert "statement 2 (line 2) is transaction control (COMMIT)" in error.message
    assert "exited with code 2" in error.message and "cannot connect" not in error.message


def test_a_wrong_password_in_the_url_fails_without_printing_it(deployment):
    deployment.postgres()
    wrong = "Wr0ng-url-pw-98765"
    error = fails(deployment, {"url": url(password=wrong), "sql": "SELECT 1"})
    assert "password authentication failed" in error.message
    assert wrong not in error.message and wrong not in "\n".join(error.log)
