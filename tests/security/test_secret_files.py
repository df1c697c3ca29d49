"""Secrets as files (issue 17 item 8): a canary secret a service takes through `secret_files` is
readable inside its container and nowhere else: not in `docker inspect`, not in the container's
files on the node's disk, not in the agent's data directory; the folder goes with the container."""
import io
import json
import os
import pathlib
import shutil
import tempfile
import uuid

import pytest

from agent import secret_files
from agent.config import Settings
from agent.service import AgentService
from agent.spec import SpecError, validate
from agent.store import EventHub, Store
from tests.agent import conftest as agent_fixtures
from tests.agent.executor.helpers import idle_service
from tests.agent.pipeline.conftest import run_to_end

pytestmark = pytest.mark.docker

make_executor = agent_fixtures.make_executor  # the agent tests' executors, cleaned up by label
CANARY = f"canary-file-{uuid.uuid4().hex}"


@pytest.fixture
def secrets_dir():
    """A folder on the host's tmpfs (/dev/shm): the agent and the engine share the path."""
    path = tempfile.mkdtemp(prefix="nullops-test-secrets-", dir="/dev/shm")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def file_agent(tmp_path, make_executor, docker_client, secrets_dir):
    executor = make_executor(publish_host="127.0.0.1", stop_grace_s=1, secrets_dir=secrets_dir)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, node_id=executor.node_id, publish_host="127.0.0.1", stop_grace=1)
    store = Store.open(data_dir)
    agent = AgentService(settings, store, EventHub(store), docker_client, executor=executor)
    try:
        yield agent
    finally:
        agent.stop(timeout=30)
        store.close()


@pytest.fixture
def user_image(docker_client, busybox_image):
    """busybox running as uid 4242: the files must be readable by the image's own user."""
    tag = "nullops-test/busybox-uid4242:latest"
    dockerfile = f"FROM {busybox_image}\nUSER 4242:4343\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True, pull=False)
    return tag


def spec_with_files(deployment_id, image):
    return {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 1,
            "limits": {"cpus": 0.5, "memory_mb": 64},
            "steps": [{"id": "db", "kind": "service", "image": image, "command": idle_service(),
                       "env": {"DB_PASSWORD_FILE": "/run/secrets/db_password"},
                       "secret_files": {"db_password": "${secrets.DB_PASSWORD}"}}]}


def _container(docker_client, agent, deployment_id):
    return docker_client.containers.list(all=True, filters={"label": [
        f"org.nullops.node={agent.executor.node_id}", f"org.nullops.deployment={deployment_id}"]})[0]


def _files_under(root):
    for folder, _, names in os.walk(root):
        for name in names:
            path = pathlib.Path(folder, name)
            if path.is_file() and not path.is_symlink():
                yield path


def test_a_secret_file_is_readable_inside_and_absent_from_inspect_disk_and_data_dir(
        file_agent, docker_client, user_image, secrets_dir, tmp_path):
    deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
    run = run_to_end(file_agent, {"deployment": spec_with_files(deployment_id, user_image),
                                  "secrets": {"DB_PASSWORD": CANARY}})
    assert run["status"] == "succeeded", run
    container = _container(docker_client, file_agent, deployment_id)

    # Inside: the image's user (4242) reads it through the *_FILE convention; mode 0400.
    script = ('cat "$DB_PASSWORD_FILE"; echo; stat -c "%a %u %g" "$DB_PASSWORD_FILE"; id -u; '
              'echo x > /run/secrets/other || echo read-only')
    result = container.exec_run(["sh", "-c", script])
    out = result.output.decode()
    assert out.split("\n")[:3] == [CANARY, "400 4242 4343", "4242"], out
    assert "read-only" in out

    # The container's configuration: Config.Env, Mounts, labels, HostConfig.
    inspect = docker_client.api.inspect_container(container.id)
    assert CANARY not in json.dumps(inspect)
    assert [m["Destination"] for m in inspect["Mounts"]] == [secret_files.TARGET]
    assert inspect["Mounts"][0]["RW"] is False

    # The node's disk: the container's own folder (config.v2.json, logs) and its writable layer.
    on_disk = [pathlib.Path("/var/lib/docker/containers", container.id)]
    upper = (inspect.get("GraphDriver") or {}).get("Data", {}).get("UpperDir")
    if upper:
        on_disk.append(pathlib.Path(upper))
    for root in on_disk:
        for path in _files_under(root):
            assert CANARY.encode() not in path.read_bytes(), f"the canary is on disk in {path}"
    # The agent's data directory (its state database included).
    for path in _files_under(tmp_path / "data"):
        assert CANARY.encode() not in path.read_bytes(), f"the canary is in the agent's {path}"
    # The one copy: on the tmpfs.
    assert secret_files.filesystem_type(secrets_dir) == "tmpfs"

    # Deleting the deployment removes the folder with the container.
    file_agent.delete({"deployment_id": deployment_id})
    file_agent.wait_idle(deployment_id, 60)
    assert not list(_files_under(secrets_dir)), "secret files outlived their container"


def test_secret_files_outside_a_tmpfs_are_refused_before_any_container(make_executor, docker_client,
                                                                      busybox_image, tmp_path):
    executor = make_executor(publish_host="127.0.0.1", secrets_dir=str(tmp_path / "on-disk"))
    spec = spec_with_files(f"dep-{uuid.uuid4().hex[:6]}", busybox_image)
    with pytest.raises(secret_files.SecretFilesError) as refused:
        executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1",
                               files={"db_password": CANARY})
    assert refused.value.code == "secret_files_unavailable" and "AGENT_SECRETS_DIR" in refused.value.message
    assert executor.service_containers(spec["deployment_id"]) == {}
    assert not list(_files_under(tmp_path))


@pytest.mark.parametrize("files", [{"../etc/passwd": "x"}, {".hidden": "x"}, {"a/b": "x"}, {"ok": 1},
                                   {f"f{i}": "x" for i in range(33)}, ["x"]])
def test_spec_refuses_bad_secret_file_names_and_values(files):
    spec = spec_with_files("dep-1", "busybox:latest")
    spec["steps"][0]["secret_files"] = files
    with pytest.raises(SpecError, match="secret_files"):
        validate(spec)


def test_filesystem_type_reads_the_longest_mount_point(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
                         "2 1 0:5 / /run rw - tmpfs tmpfs rw\n"
                         "3 2 0:6 / /run/disk\\040x rw - ext4 /dev/sdb rw\n")
    assert secret_files.filesystem_type("/run/nullops", str(mountinfo)) == "tmpfs"
    assert secret_files.filesystem_type("/run/disk x/y", str(mountinfo)) == "ext4"
    assert secret_files.filesystem_type("/runaway", str(mountinfo)) == "ext4"


def test_a_container_whose_secret_files_a_reboot_emptied_is_removed_to_be_recreated(
        make_executor, busybox_image, secrets_dir):
    executor = make_executor(publish_host="127.0.0.1", secrets_dir=secrets_dir)
    spec = spec_with_files(f"dep-{uuid.uuid4().hex[:6]}", busybox_image)
    container = executor.start_service(spec, spec["steps"][0], {}, idle_service(), "run-1",
                                       files={"db_password": CANARY})
    container.stop(timeout=1)
    shutil.rmtree(executor.secret_files.folder(spec["deployment_id"], "db"))  # as a reboot would
    assert executor.restart_dead(spec["deployment_id"]) == []
    assert executor.service_containers(spec["deployment_id"]) == {}  # missing: the reconcile recreates it
