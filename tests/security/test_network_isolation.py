"""Issue 17 item 1: a deployment reaches neither another deployment (by name, by container IP, by
its published ports through the gateway or the node's address), nor the agent's port, nor the
LAN, nor a metadata address; a LAN host does not reach the published ports, the ingress's
address and the node itself do; Caddy still reaches the published services. Real engine, real
iptables (the agent's own start path installs the rules), real Caddy.

The LAN is a network namespace of the test's own behind a veth pair: the host side holds the
node's address (where services are published and the agent listens, as on a real node), the far
side a LAN host and 169.254.169.254, each answering on port 80, and the Caddy host's address.
Nothing leaves this machine.
"""
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from agent import labels as L
from agent.__main__ import network_guard
from agent.config import Settings
from agent.docker_exec import Executor
from agent.netguard import NetworkGuard
from app.ingress.caddy import CaddyAdmin
from tests.agent.executor.helpers import dep_id, httpd_service, service, spec_for
from tests.caddytools import caddy  # noqa: F401 - fixture
from tests.dockertools import left_behind, remove_labelled

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables"),
                                 reason="needs root and iptables (make test runs as root)")]

POOL = "10.236.0.0/16"   # this file's own pool: its rules never touch other tests' deployments,
# and outside the default pool (10.240.0.0/12), whose rules another agent on this host may hold
METADATA = "169.254.169.254"
LISTENER = """
import socket, sys
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 80)); server.listen(16); print("up", flush=True)
while True:
    server.accept()[0].close()
"""


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def lan():
    """{"node": the node's address on the LAN, "host": a LAN host, "ingress": the Caddy host's
    address (in the node's AGENT_INGRESS_FROM), "netns": the LAN}; node and host answer on port 80."""
    tag = uuid.uuid4().hex[:6]
    netns, near, far = f"nlo-{tag}", f"nlh{tag}", f"nln{tag}"
    octet = random.randint(100, 250)
    node, host, ingress = (f"192.168.{octet}.{last}" for last in (1, 2, 3))
    listener = None
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", near, "type", "veth", "peer", "name", far, "netns", netns)
        sh("ip", "addr", "add", f"{node}/24", "dev", near)
        sh("ip", "link", "set", near, "up")
        for address in (f"{host}/24", f"{ingress}/24", f"{METADATA}/32"):
            sh("ip", "-n", netns, "addr", "add", address, "dev", far)
        sh("ip", "-n", netns, "link", "set", far, "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", node)
        sh("ip", "route", "replace", f"{METADATA}/32", "dev", near)  # as a cloud routes it
        listener = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER],
                                    stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "up"
        yield {"node": node, "host": host, "ingress": ingress, "netns": netns}
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        subprocess.run(["ip", "route", "del", f"{METADATA}/32", "dev", near], capture_output=True)
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.fixture
def agent_port():
    """A stand-in for the agent's port: listening on every address, as AGENT_HOST's default."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


@pytest.fixture
def node(docker_client, test_labels, lan, tmp_path):
    """An executor publishing on the node's address, with the rules the agent installs at start."""
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path, node_id=node_id, subnet_pool=POOL, publish_host=lan["node"],
                        ingress_from=(ipaddress.ip_network(f"{lan['ingress']}/32"),))
    guard = network_guard(settings)
    try:
        yield Executor(docker_client, node_id, subnet_pool=POOL, publish_host=settings.publish_host,
                       labels=test_labels, stop_grace_s=1)
    finally:
        remove_labelled(docker_client, f"{L.NODE}={node_id}")
        if guard is not None:
            guard.remove()
    assert not left_behind(docker_client, f"{L.NODE}={node_id}")


def probe(docker_client, container, targets):
    """{target: True when a TCP connection from `container` to it opened}, tried in parallel."""
    script = " ".join(
        f'(if echo | nc -w 1 {target.rsplit(":", 1)[0]} {target.rsplit(":", 1)[1]} >/dev/null 2>&1; '
        f'then echo "{target} open"; else echo "{target} closed"; fi) &' for target in targets) + " wait"
    result = docker_client.api.exec_create(container.id, ["sh", "-c", script])
    output = docker_client.api.exec_start(result["Id"]).decode()
    lines = dict(line.rsplit(" ", 1) for line in output.splitlines() if line.strip())
    return {target: lines.get(target) == "open" for target in targets}


def wait_open(docker_client, container, target, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while not probe(docker_client, container, [target])[target]:
        assert time.monotonic() < deadline, f"{target} never answered from inside its deployment"
        time.sleep(0.2)


def test_a_deployment_reaches_nothing_of_another_nor_the_host_lan_or_metadata(
        docker_client, node, lan, agent_port, busybox_image, caddy):  # noqa: F811 - fixture
    a, b = dep_id(), dep_id()

    def web(deployment, step_id):
        step = service(step_id, busybox_image, ports=[8080], expose=[8080])
        return node.start_service(spec_for(deployment, step), step, {}, httpd_service(0), "run-1")

    web_a, web_b = web(a, "app"), web(b, "shop")
    port_b = node.published_ports(web_b)[8080]
    network_a = web_a.attrs["NetworkSettings"]["Networks"][node.network_name(a)]
    web_b.reload()
    ip_b = web_b.attrs["NetworkSettings"]["Networks"][node.network_name(b)]["IPAddress"]
    gateway_a = network_a["Gateway"] or docker_client.networks.get(node.network_name(a)).attrs[
        "IPAM"]["Config"][0]["Gateway"]
    # Its own deployment stays reachable by name: the probes below can see an open port.
    wait_open(docker_client, web_a, "app:8080")

    refused = [
        "shop:8080", f"{web_b.name}:8080",                 # B by name (its alias, its container)
        f"{ip_b}:8080",                                    # B by container IP
        f"{gateway_a}:{port_b}", f"{lan['node']}:{port_b}",  # B's published port via the host
        f"{gateway_a}:{agent_port}", f"{lan['node']}:{agent_port}",  # the agent's port
        f"{METADATA}:80", f"{lan['host']}:80",             # cloud metadata, a LAN host
    ]
    reached = probe(docker_client, web_a, refused)
    assert not [target for target, is_open in reached.items() if is_open], reached

    # An operator's --egress-allow opens that one address (a shared database server, say): the
    # rules are replaced in place, and nothing else opens with it.
    NetworkGuard(POOL, egress_allow=[f"{lan['host']}/32"]).install()
    reached = probe(docker_client, web_a, [f"{lan['host']}:80", f"{METADATA}:80", f"{lan['node']}:{port_b}"])
    assert reached == {f"{lan['host']}:80": True, f"{METADATA}:80": False, f"{lan['node']}:{port_b}": False}

    # Caddy on the host still reaches B through the port published on the node's address.
    CaddyAdmin(caddy.admin_url, caddy.listen, "127.0.0.1:9").full_sync(
        {"shop.b.local.test": f"{lan['node']}:{port_b}"})
    assert caddy.get("shop.b.local.test") == (200, "ok\n")


def test_the_rules_install_and_remove_idempotently():
    guard = NetworkGuard("10.248.0.0/16", blocked=[], dns_servers=[])
    try:
        guard.install()
        guard.install()
        rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
        assert rules.count(f"-j {guard.input_chain}") == 1
        assert rules.count(f"-j {guard.forward_chain}") == 1
        assert guard.installed() and guard.ensure() is False
        subprocess.run(["iptables", "-w", "-D", "INPUT", "-s", "10.248.0.0/16", "-j", guard.input_chain],
                       check=True)
        assert guard.ensure() is True and guard.installed()  # put back, e.g. after a flush
    finally:
        guard.remove()
        guard.remove()
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert guard.input_chain not in rules and guard.forward_chain not in rules


@pytest.mark.parametrize(("wrapper", "expected"), [
    (["setpriv", "--bounding-set=-net_admin", "--"], "Permission denied"),   # no NET_ADMIN
    (["unshare", "--net", "--"], "DOCKER-USER"),                            # not the host's network
])
def test_an_agent_that_cannot_hold_the_rules_refuses_to_start_and_says_why(tmp_path, wrapper, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env["AGENT_TOKEN"] = "t" * 32
    result = subprocess.run(
        [*wrapper, sys.executable, "-m", "agent", "--data-dir", str(tmp_path / "data"), "--host",
         "127.0.0.1", "--port", "0", "--subnet-pool", "10.247.0.0/16"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "network isolation: cannot read Docker's DOCKER-USER chain" in result.stderr
    assert expected in result.stderr and "AGENT_NETWORK_ISOLATION=off" in result.stderr


def lan_reaches(lan, source, port):
    """True when a TCP connection from `source` (an address of the LAN namespace) to the node's
    published `port` opens."""
    script = ("import socket, sys\ntry:\n"
              f"    socket.create_connection(({lan['node']!r}, {port}), timeout=3,"
              f" source_address=({source!r}, 0)).close()\n"
              "except OSError:\n    sys.exit(1)\n")
    return subprocess.run(["ip", "netns", "exec", lan["netns"], sys.executable, "-c", script],
                          capture_output=True, timeout=30).returncode == 0


def test_a_lan_host_reaches_no_published_port_but_the_ingress_and_the_node_do(
        docker_client, node, lan, busybox_image, caddy):  # noqa: F811 - fixture
    deployment = dep_id()
    step = service("web", busybox_image, ports=[8080], expose=[8080])
    web = node.start_service(spec_for(deployment, step), step, {}, httpd_service(0), "run-1")
    port = node.published_ports(web)[8080]
    wait_open(docker_client, web, "web:8080")

    # The Caddy host (AGENT_INGRESS_FROM) gets in; another LAN host is refused at once.
    assert lan_reaches(lan, lan["ingress"], port)
    started = time.monotonic()
    assert not lan_reaches(lan, lan["host"], port)
    assert time.monotonic() - started < 2.5  # refused (a reset), not left to time out
    # The node itself: Caddy beside the agent (make run) dials the published port.
    CaddyAdmin(caddy.admin_url, caddy.listen, "127.0.0.1:9").full_sync(
        {"web.d.local.test": f"{lan['node']}:{port}"})
    assert caddy.get("web.d.local.test") == (200, "ok\n")

    # The control plane links from the LAN host (AGENT_INGRESS_FROM=link): the rules now let that
    # address in, and a link from elsewhere takes the permission back.
    guard = NetworkGuard(POOL)
    assert guard.set_ingress_peer(lan["host"]) is True
    assert lan_reaches(lan, lan["host"], port) and not lan_reaches(lan, lan["ingress"], port)
    assert guard.set_ingress_peer(lan["ingress"]) is True
    assert lan_reaches(lan, lan["ingress"], port) and not lan_reaches(lan, lan["host"], port)
