"""The agent's Docker image, built here from the local base and run as docs/agent.md shows it:
`--network host --cap-add NET_ADMIN -e AGENT_HOST=... -e AGENT_PORT=... -e AGENT_TOKEN=...
-v /var/run/docker.sock:/var/run/docker.sock -v <volume>:/data`, its network isolation rules
(on a pool of the test's own) removed afterwards with `--remove-network-rules`.

The build is skipped when the image already carries the hash of its inputs (Dockerfile,
requirements, the agent's files, the base image's id). A cold build installs the requirements
from PyPI and takes about a minute; a warm run of this file takes a few seconds.
"""
import hashlib
import io
import re
import socket
import tarfile
import time
import uuid

import pytest

from agent import protocol
from tests.dockertools import BASE_IMAGE, HASH_LABEL, LABEL, unavailable

from .support import REPO, TOKEN, open_link

IMAGE = "nullops-test/agent:latest"
POOL = "10.245.0.0/16"  # this file's pool: the rules the image's agent installs touch nothing else
THUMBPRINT = re.compile(r"certificate thumbprint sha256: ([0-9a-f]{64})")


def _pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_agent_requirements_pin_the_repository_versions():
    agent, root = _pins(REPO / "agent/requirements.txt"), _pins(REPO / "requirements.txt")
    for name in ("flask", "flask-sock", "cryptography", "websockets", "psutil", "docker"):
        assert agent.get(name) == root.get(name), name
    for name, version in agent.items():
        assert root.get(name, version) == version, name


# --- the image ------------------------------------------------------------------------------------
def _context_files():
    """Everything the build reads: agent/ without caches. The build context is the repository
    root; only these files go into it (the root also holds .venv and node_modules)."""
    files = [p for p in sorted((REPO / "agent").rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return {str(p.relative_to(REPO)): p.read_bytes() for p in files}


def _context_tar(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="session")
def agent_image(docker_client):
    from docker.errors import APIError, BuildError, NotFound

    try:
        base = docker_client.images.get(BASE_IMAGE)
    except NotFound:
        unavailable(f"test image {BASE_IMAGE} is missing; run scripts/build-test-images.sh")
    files = _context_files()
    digest = hashlib.sha256(base.id.encode())
    for name, data in files.items():
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    inputs = digest.hexdigest()
    old = None
    try:
        old = docker_client.images.get(IMAGE)
        if old.labels.get(HASH_LABEL) == inputs:
            return IMAGE
    except NotFound:
        pass
    try:
        docker_client.images.build(
            fileobj=_context_tar(files), custom_context=True, dockerfile="agent/Dockerfile", tag=IMAGE,
            buildargs={"BASE_IMAGE": BASE_IMAGE}, labels={HASH_LABEL: inputs}, rm=True, forcerm=True,
            pull=False, timeout=900)
    except BuildError as exc:
        log = "".join(item.get("stream", "") or item.get("error", "") for item in exc.build_log)
        pytest.fail(f"building {IMAGE} failed: {exc.msg}\n{log[-4000:]}", pytrace=False)
    if old is not None:  # the image this build replaced, unless something still uses it
        try:
            docker_client.images.remove(old.id)
        except APIError:
            pass
    return IMAGE


@pytest.mark.docker
def test_the_image_runs_as_documented_and_serves_the_link(docker_client, agent_image, test_labels):
    pytest.importorskip("agent.service", reason="agent/service.py (the real service) is not there yet")
    from docker.errors import NotFound

    from agent.netguard import NetworkGuard

    volume = docker_client.volumes.create(f"nullops-test-agent-{test_labels[LABEL][:12]}", labels=test_labels)
    container = None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guard = NetworkGuard(POOL)
    socket_volume = {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}
    try:
        container = docker_client.containers.run(
            agent_image, detach=True, labels=test_labels, network_mode="host", cap_add=["NET_ADMIN"],
            environment={"AGENT_TOKEN": TOKEN, "AGENT_HOST": "127.0.0.1", "AGENT_PORT": str(port),
                         "AGENT_SUBNET_POOL": POOL},
            volumes={**socket_volume, volume.name: {"bind": "/data", "mode": "rw"}},
        )
        hello = None
        deadline = time.monotonic() + 60
        while hello is None:
            try:
                ws, hello = open_link(port)
                ws.close()
            except (OSError, EOFError) as exc:
                container.reload()
                logs = container.logs().decode(errors="replace")
                assert container.status == "running", f"the agent exited:\n{logs}"
                assert time.monotonic() < deadline, f"no link after 60 s ({exc!r}):\n{logs}"
                time.sleep(0.3)
        logs = container.logs().decode(errors="replace")
        assert THUMBPRINT.search(logs).group(1) == hello["thumbprint"]
        assert hello["protocol"] == protocol.PROTOCOL_VERSION and hello["node_id"].startswith("node-")
        assert TOKEN not in logs
        assert guard.installed()  # the image's iptables found the host's backend

        container.stop(timeout=20)  # SIGTERM: a clean stop within the timeout
        assert container.wait(timeout=30)["StatusCode"] == 0
        assert container.logs().decode(errors="replace").rstrip().endswith("stopped")
        assert guard.installed()  # its deployments keep running, so the rules stay
        removal = docker_client.containers.run(
            agent_image, ["--remove-network-rules"], remove=True, labels=test_labels,
            network_mode="host", cap_add=["NET_ADMIN"], environment={"AGENT_SUBNET_POOL": POOL},
            stdout=True, stderr=True)
        assert not guard.installed(), removal
    finally:
        if container is not None:
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
        volume.remove(force=True)
        guard.remove()


@pytest.mark.docker
def test_the_image_deploys_with_readiness_probed_from_inside_its_container(docker_client, agent_image,
                                                                          test_labels):
    """The agent in its container reaches services only over their deployment network: it joins
    the network for the probe. A deployment comes up, answers on its published port, and goes."""
    from agent import labels as L
    from agent import protocol

    from ..executor.helpers import idle_service, tcp_service
    from .support import call, recv

    node_id = f"test-{uuid.uuid4().hex[:8]}"
    volume = docker_client.volumes.create(f"nullops-test-agent-{test_labels[LABEL][:12]}", labels=test_labels)
    container = None
    try:
        container = docker_client.containers.run(
            agent_image, detach=True, labels=test_labels,
            # In a network of its own (no host rules): readiness probes join the deployment network.
            environment={"AGENT_TOKEN": TOKEN, "AGENT_NODE_ID": node_id, "AGENT_PUBLISH_HOST": "127.0.0.1",
                         "AGENT_NETWORK_ISOLATION": "off"},
            ports={"5000/tcp": ("127.0.0.1", None)},
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                     volume.name: {"bind": "/data", "mode": "rw"}})
        container.reload()
        port = int(container.ports["5000/tcp"][0]["HostPort"])
        deadline = time.monotonic() + 60
        while True:
            try:
                ws, hello = open_link(port)
                break
            except (OSError, EOFError):
                assert time.monotonic() < deadline, container.logs().decode(errors="replace")
                time.sleep(0.3)
        assert hello["node_id"] == node_id
        deployment_id = f"dep-{uuid.uuid4().hex[:6]}"
        spec = {"deployment_id": deployment_id, "limits": {"cpus": 0.5, "memory_mb": 128}, "steps": [
            {"id": "db", "kind": "service", "image": BASE_IMAGE, "command": tcp_service(0.3),
             "ports": [9000], "readiness": {"type": "tcp", "port": 9000}},
            {"id": "web", "kind": "service", "image": "nullops-test/busybox:latest", "depends_on": ["db"],
             "command": idle_service("mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www"),
             "ports": [8080], "expose": [8080], "readiness": {"type": "http", "port": 8080, "path": "/"}}]}
        assert call(ws, "a", protocol.DEPLOYMENT_APPLY, {"deployment": spec, "secrets": {}})["ok"]
        status = None
        deadline = time.monotonic() + 90
        while status not in ("ready", "failed") and time.monotonic() < deadline:
            frame = recv(ws, 30)
            if frame.get("event") == protocol.DEPLOYMENT_STATUS:
                status, data = frame["data"]["status"], frame["data"]
        assert status == "ready", (data, container.logs().decode(errors="replace")[-3000:])
        host_port = data["services"]["web"]["ports"]["8080"]
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):  # until the server closes (HTTP/1.0)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n")
        network = docker_client.networks.list(filters={"label": f"{L.DEPLOYMENT}={deployment_id}"})[0]
        network.reload()
        assert container.id not in (network.attrs.get("Containers") or {})  # left after the probe
        assert call(ws, "d", protocol.DEPLOYMENT_DELETE, {"deployment_id": deployment_id})["ok"]
        deadline = time.monotonic() + 60
        while status != "deleted" and time.monotonic() < deadline:
            frame = recv(ws, 30)
            if frame.get("event") == protocol.DEPLOYMENT_STATUS:
                status = frame["data"]["status"]
        assert status == "deleted"
        ws.close()
        selector = {"label": f"{L.NODE}={node_id}"}
        assert docker_client.containers.list(all=True, filters=selector) == []
        assert docker_client.networks.list(filters=selector) == []
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        for obj in docker_client.containers.list(all=True, filters={"label": f"{L.NODE}={node_id}"}):
            obj.remove(force=True)
        for obj in docker_client.networks.list(filters={"label": f"{L.NODE}={node_id}"}):
            obj.remove()
        volume.remove(force=True)
