"""images/postgres: a PostgreSQL 15 service from Debian's packages; password auth from the
network with POSTGRES_PASSWORD, data inside the container, a fast clean stop on SIGTERM."""
import time

import psycopg2
import pytest

from .conftest import ADMIN_PASSWORD, connect, query

pytestmark = pytest.mark.docker


def test_listens_on_all_addresses_with_the_password_from_the_environment(deployment, docker_client):
    port = deployment.postgres()
    assert query(port, "SHOW listen_addresses") == [("*",)]
    stored = "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
    assert query(port, stored) == [(True,)]
    assert query(port, "SELECT split_part(version(), ' ', 2)")[0][0].startswith("15.")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(port, password="not-the-password")
    container = docker_client.containers.get(deployment.executor.container_name(deployment.id, "db"))
    assert container.attrs["Mounts"] == []  # data lives and dies with the container
    assert query(port, "SHOW data_directory") == [("/var/lib/postgresql/data",)]


def test_without_a_password_it_exits_saying_what_to_set(docker_client, images, test_labels):
    container = docker_client.containers.run(images["postgres"], detach=True, labels=test_labels)
    assert container.wait(timeout=30)["StatusCode"] == 2
    assert b"set POSTGRES_PASSWORD" in container.logs()


def test_sigterm_stops_it_cleanly_at_once_even_with_a_client_connected(deployment, docker_client):
    port = deployment.postgres()
    client = connect(port)
    container = docker_client.containers.get(deployment.executor.container_name(deployment.id, "db"))
    started = time.monotonic()
    container.kill(signal="SIGTERM")
    assert container.wait(timeout=20)["StatusCode"] == 0
    took = time.monotonic() - started
    assert took < 5, f"stopping took {took:.1f} s"
    logs = container.logs().decode()
    assert "database system is shut down" in logs
    assert ADMIN_PASSWORD not in logs
    client.close()
