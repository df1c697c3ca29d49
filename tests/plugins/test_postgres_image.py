"""images/postgres: a PostgreSQL 15 service from Debian's packages; password auth from the
network with POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), data inside the container, a fast
clean stop on SIGTERM."""
import json
import shutil
import tempfile
import time
import uuid

import psycopg2
import pytest

from agent import readiness
from tests.agent.executor.helpers import service, spec_for

from .conftest import ADMIN_PASSWORD, POSTGRES_READY, connect, query

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


def test_the_password_can_come_from_a_secret_file_owned_by_the_images_named_user(
        make_executor, images, docker_client, cancel):
    """docs/pipelines.md's example: POSTGRES_PASSWORD_FILE pointing at a NullOps secret file
    (issue 17 item 8). The image runs as `postgres`, a name: the agent finds its uid in the
    image's /etc/passwd, so the file (0400) is that user's."""
    folder = tempfile.mkdtemp(prefix="nullops-test-secrets-", dir="/dev/shm")
    try:
        node = make_executor(publish_host="127.0.0.1", secrets_dir=folder)
        step = service("db", images["postgres"], ports=[5432], expose=[5432])
        spec = spec_for(f"dep-{uuid.uuid4().hex[:6]}", step)
        container = node.start_service(spec, step, {"POSTGRES_PASSWORD_FILE": "/run/secrets/pg"}, None,
                                       "run-1", files={"pg": ADMIN_PASSWORD})
        readiness.wait_ready(node, container, POSTGRES_READY, cancel=cancel, deadline_s=60)
        port = node.published_ports(container)[5432]
        assert query(port, "SELECT current_user") == [("postgres",)]  # with ADMIN_PASSWORD
        assert ADMIN_PASSWORD not in json.dumps(docker_client.api.inspect_container(container.id))
        owner = container.exec_run(["stat", "-c", "%U %a", "/run/secrets/pg"]).output.decode().split()
        assert owner == ["postgres", "400"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
