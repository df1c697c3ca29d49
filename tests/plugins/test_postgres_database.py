"""plugins/postgres-database, run as the agent runs it against the PostgreSQL service image:
a role and a database the output URL connects to, quoted names, idempotent runs, a rollback
that drops both, and no secret in any log."""
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from agent.errors import PluginError

from .conftest import ADMIN_PASSWORD, connect, query

pytestmark = pytest.mark.docker

HOSTILE_DB = 'shop"; DROP DATABASE postgres; --'
HOSTILE_USER = "app'); DROP ROLE postgres; --"


def params(**extra):
    # The deployment's own server: the names as given (scope "deployment", the default that
    # appends the deployment's id, is tested on a shared server in test_postgres_shared_server.py).
    return {"host": "db", "port": "5432", "admin_password": ADMIN_PASSWORD, "scope": "none", **extra}


def exists(port, database=None, user=None):
    if database is not None:
        return bool(query(port, "SELECT 1 FROM pg_database WHERE datname = %s", (database,)))
    return bool(query(port, "SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)))


def test_creates_a_database_whose_output_url_works_for_the_next_plugin(deployment):
    port = deployment.postgres()
    result = deployment.plugin("postgres-database", params(database="shop", user="shop_app"),
                               secrets={"DB_PASSWORD": ADMIN_PASSWORD})
    out = result.output
    assert out["secret_outputs"] == ["url", "password"]
    assert (out["database"], out["user"], out["host"], out["port"]) == ("shop", "shop_app", "db", 5432)
    assert out["url"] == f"postgresql://shop_app:{out['password']}@db:5432/shop"
    assert len(out["password"]) == 32
    log = "\n".join(result.log)
    assert "created role 'shop_app'" in log and "created database 'shop' owned by 'shop_app'" in log
    assert out["password"] not in log and ADMIN_PASSWORD not in log

    # The next step connects with the output URL, as `${steps.mkdb.outputs.url}` gives it.
    seeded = deployment.plugin("sql-script", {"url": out["url"], "sql": (
        "CREATE TABLE items (name text); INSERT INTO items VALUES ('apple'), ('pear');")})
    assert seeded.output == {"statements": 2}
    rows = query(port, "SELECT name, current_user FROM items ORDER BY name", user="shop_app",
                 password=out["password"], dbname="shop")
    assert rows == [("apple", "shop_app"), ("pear", "shop_app")]
    owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"
    assert query(port, owner) == [("shop_app",)]
    # Other roles of the server cannot connect to it.
    query(port, "CREATE ROLE other LOGIN PASSWORD 'other-pw'")
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        connect(port, user="other", password="other-pw", dbname="shop")


def test_hostile_names_are_quoted_as_identifiers_never_run_as_sql(deployment):
    port = deployment.postgres()
    out = deployment.plugin("postgres-database", params(database=HOSTILE_DB, user=HOSTILE_USER)).output
    assert exists(port, database=HOSTILE_DB) and exists(port, user=HOSTILE_USER)
    assert exists(port, database="postgres") and exists(port, user="postgres")
    parts = urlsplit(out["url"])  # names are percent-encoded in the URL
    assert '"' not in parts.path and "'" not in out["url"].split("@")[0]
    seeded = deployment.plugin("sql-script", {"url": out["url"], "sql": "SELECT current_database(); "
                                                                        "CREATE TABLE t (x int)"})
    assert seeded.output == {"statements": 2}
    assert query(port, "SELECT current_database(), current_user", user=HOSTILE_USER,
                 password=out["password"], dbname=HOSTILE_DB) == [(HOSTILE_DB, HOSTILE_USER)]

    deployment.plugin("postgres-database", params(database=HOSTILE_DB, user=HOSTILE_USER), action="rollback")
    assert not exists(port, database=HOSTILE_DB) and not exists(port, user=HOSTILE_USER)
    assert exists(port, database="postgres") and exists(port, user="postgres")


def test_rollback_drops_database_and_role_while_the_application_is_connected(deployment):
    port = deployment.postgres()
    out = deployment.plugin("postgres-database", params(database="shop", user="shop_app")).output
    application = connect(port, user="shop_app", password=out["password"], dbname="shop")

    shop = params(database="shop", user="shop_app")
    result = deployment.plugin("postgres-database", shop, action="rollback")
    assert result.output == {"dropped_database": True, "dropped_user": True}
    assert not exists(port, database="shop") and not exists(port, user="shop_app")
    application.close()
    # Twice (a retried delete, or a rollback after a run that failed half way) is fine.
    again = deployment.plugin("postgres-database", shop, action="rollback")
    assert again.output == {"dropped_database": False, "dropped_user": False}
    assert "database 'shop' was already gone, role 'shop_app' was already gone" in again.log[-1]


def test_a_second_run_reuses_both_with_a_new_password_unless_told_to_fail(deployment):
    port = deployment.postgres()
    first = deployment.plugin("postgres-database", params(database="shop")).output
    assert first["user"] == "shop"  # the user defaults to the database's name
    query(port, "CREATE TABLE kept (x int)", user="shop", password=first["password"], dbname="shop")

    second = deployment.plugin("postgres-database", params(database="shop"))
    assert second.output["password"] != first["password"]
    assert "reused role 'shop'" in "\n".join(second.log)
    assert query(port, "SELECT count(*) FROM kept", user="shop", password=second.output["password"],
                 dbname="shop") == [(0,)]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(port, user="shop", password=first["password"], dbname="shop")

    with pytest.raises(PluginError) as caught:
        deployment.plugin("postgres-database", params(database="shop", if_exists="fail"))
    assert "role 'shop' already exists" in caught.value.message
    # An existing database alone is refused too, before the new role is made.
    with pytest.raises(PluginError) as caught:
        deployment.plugin("postgres-database", params(database="shop", user="newcomer", if_exists="fail"))
    assert "database 'shop' already exists" in caught.value.message
    assert not exists(port, user="newcomer")
    with pytest.raises(PluginError) as caught:
        deployment.plugin("postgres-database", params(database="shop", user="postgres"))
    assert "must not be the admin user" in caught.value.message
    assert "exited with code 2" in caught.value.message


def test_a_wrong_admin_password_fails_at_once_and_is_never_printed(deployment):
    deployment.postgres()
    wrong = "Wr0ng-admin-pw-1234"
    started = time.monotonic()
    with pytest.raises(PluginError) as caught:
        # Not in `secrets`: the agent's redaction does not hide it, only the plugin's care does.
        deployment.plugin("postgres-database", params(database="shop", admin_password=wrong, wait_s=30))
    assert time.monotonic() - started < 10  # no waiting on a refusal that waiting cannot cure
    assert "password authentication failed" in caught.value.message
    assert wrong not in caught.value.message and wrong not in "\n".join(caught.value.log)


def test_an_unreachable_server_fails_after_wait_s_naming_it(deployment):
    with pytest.raises(PluginError) as caught:
        deployment.plugin("postgres-database", {"host": "nowhere", "database": "shop", "wait_s": 1})
    assert "cannot connect to nowhere:5432 as postgres" in caught.value.message
    assert "exited with code 1" in caught.value.message
