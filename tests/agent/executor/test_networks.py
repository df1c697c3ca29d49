"""Deployment networks: one bridge per deployment, subnets allocated by the agent from its pool."""
import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from docker.types import IPAMConfig, IPAMPool

from agent import labels as L

from .helpers import dep_id

pytestmark = pytest.mark.docker


def subnet_of(network):
    return ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])


def engine_subnets(client, exclude=None):
    found = []
    for net in client.api.networks():
        if net["Id"] == exclude:
            continue
        for config in (net.get("IPAM") or {}).get("Config") or []:
            found.append(ipaddress.ip_network(config["Subnet"]))
    return found


def test_network_per_deployment_gets_a_pool_subnet_and_is_idempotent(docker_client, executor):
    deployment = dep_id()
    network = executor.ensure_network(deployment)

    assert network.name == f"nullops-{executor.node_id}-{deployment}"
    attrs = docker_client.api.inspect_network(network.id)
    assert attrs["Driver"] == "bridge" and attrs["Internal"] is False
    labels = attrs["Labels"]
    assert labels[L.NODE] == executor.node_id and labels[L.DEPLOYMENT] == deployment
    assert labels[L.ROLE] == L.ROLE_NETWORK
    subnet = subnet_of(network)
    assert labels[L.SUBNET] == str(subnet)
    assert subnet.subnet_of(ipaddress.ip_network("10.240.0.0/12")) and subnet.prefixlen == 24
    assert not any(subnet.overlaps(other) for other in engine_subnets(docker_client, exclude=network.id))

    again = executor.ensure_network(deployment)
    assert again.id == network.id
    assert len(docker_client.networks.list(names=[network.name])) == 1


def test_subnet_skips_what_other_software_uses(docker_client, make_executor, test_labels):
    executor = make_executor(subnet_pool="10.251.0.0/16")
    # Someone else (not an agent: no node label) holds the first /24 of the pool ...
    docker_client.networks.create(
        f"other-software-{dep_id()}", driver="bridge", labels=test_labels, check_duplicate=True,
        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="10.251.0.0/23")]))
    network = executor.ensure_network(dep_id())
    assert subnet_of(network) == ipaddress.ip_network("10.251.2.0/24")


def test_subnet_taken_by_a_concurrent_agent_is_skipped_on_refusal(docker_client, make_executor):
    first = make_executor(subnet_pool="10.252.0.0/16")
    second = make_executor(subnet_pool="10.252.0.0/16")
    taken = first.ensure_network(dep_id())
    # The second agent listed the engine's networks before the first one created its own:
    # it tries the same subnet, the engine refuses (403 "Pool overlaps"), it takes the next.
    second._taken_subnets = lambda: []
    network = second.ensure_network(dep_id())
    assert subnet_of(taken) == ipaddress.ip_network("10.252.0.0/24")
    assert subnet_of(network) == ipaddress.ip_network("10.252.1.0/24")


def test_forty_deployments_beyond_dockers_default_pools(docker_client, make_executor):
    # Docker's default address pools hold about 30 bridge networks; the agent's pool holds
    # 4,096 /24s. Two agents sharing the engine allocate concurrently.
    agents = [make_executor(subnet_pool="10.253.0.0/16"), make_executor(subnet_pool="10.253.0.0/16")]
    deployments = [(agents[i % 2], f"many-{i}") for i in range(40)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        networks = list(pool.map(lambda pair: pair[0].ensure_network(pair[1]), deployments))
    created = time.monotonic() - started
    subnets = [subnet_of(n) for n in networks]
    assert len(set(subnets)) == 40
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(lambda pair: pair[0].teardown(pair[1]), deployments))
    print(f"\n40 networks: created in {created:.2f} s, all gone in {time.monotonic() - started:.2f} s")
    assert all(c == {"containers": 0, "networks": 1, "volumes": 0} for c in counts)
    for agent in agents:
        assert agent.deployment_ids() == set()
        assert docker_client.networks.list(filters={"label": f"{L.NODE}={agent.node_id}"}) == []
