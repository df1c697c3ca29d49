"""The isolation rules' content (agent/netguard.py), without iptables: what passes comes before
what is refused, and what the host's files say is read right. The rules' effect on real traffic
is tests/security/test_network_isolation.py."""
import dataclasses
import ipaddress
import subprocess
from types import SimpleNamespace

import pytest

from agent.__main__ import network_guard
from agent.config import Settings
from agent.netguard import (
    INGRESS_PEER,
    NetworkGuard,
    NetworkGuardError,
    connected_networks,
    name_servers,
    peer_network,
)
from agent.service import AgentService
from agent.store import Store

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000A8C0\t0100000A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_the_lans_are_the_routes_without_a_gateway(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    # The default route and a route through a gateway are not the host's own networks.
    assert connected_networks(str(routes)) == [ipaddress.ip_network("192.0.2.0/24")]


def test_name_servers_come_from_both_resolver_files_without_loopback(tmp_path):
    etc, systemd = tmp_path / "resolv.conf", tmp_path / "systemd.conf"
    etc.write_text("nameserver 127.0.0.53\noptions edns0\n")
    systemd.write_text("nameserver 192.168.1.1\nnameserver fd00::1\nnameserver bogus\n")
    assert name_servers((str(etc), str(systemd), str(tmp_path / "missing"))) == [
        ipaddress.ip_address("192.168.1.1")]


def test_replies_dns_and_allowed_ranges_pass_before_anything_is_refused():
    guard = NetworkGuard("10.249.0.0/16", egress_allow=["10.0.8.0/24"], blocked=["203.0.113.0/24"],
                         dns_servers=["10.255.255.53"], iptables="iptables")
    rules = guard.rules()
    for chain_rules in rules.values():  # the published-port chain's order is checked below
        targets = [rule[rule.index("-j") + 1] for rule in chain_rules]
        first_reject = targets.index("REJECT")
        assert chain_rules[0][2:] == ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
        assert set(targets[:first_reject]) == {"RETURN"} and set(targets[first_reject:]) == {"REJECT"}
        passed = [rule[rule.index("-d") + 1] for rule in chain_rules[:first_reject] if "-d" in rule]
        if chain_rules is rules[guard.published_chain]:
            continue
        assert "10.255.255.53/32" in passed and "10.0.8.0/24" in passed
    forward = rules[guard.forward_chain]
    refused = {rule[rule.index("-d") + 1] for rule in forward if "-d" in rule and "REJECT" in rule}
    # The host's own LAN and the metadata range besides the private ones; the pool is Docker's.
    assert {"203.0.113.0/24", "169.254.0.0/16", "10.0.0.0/8", "100.64.0.0/10"} <= refused
    assert ["-A", guard.forward_chain, "-d", "10.249.0.0/16", "-j", "RETURN"] in forward
    # The host itself refuses everything new from the pool, not only some addresses.
    assert ["-A", guard.input_chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"] in rules[
        guard.input_chain]


def test_each_pool_has_chains_of_its_own():
    one, two = (NetworkGuard(pool, blocked=[], dns_servers=[], iptables="iptables")
                for pool in ("10.249.0.0/16", "10.250.0.0/16"))
    assert one.input_chain != two.input_chain and one.forward_chain != two.forward_chain
    assert len(one.forward_chain) <= 28  # iptables' limit on chain names


def test_published_ports_open_only_to_the_pool_the_ingress_and_the_link_peer():
    guard = NetworkGuard("10.249.0.0/16", ingress_from=["192.0.2.0/24", "192.0.2.7/32"],
                         ingress_peer="198.51.100.4", blocked=[], dns_servers=[], iptables="iptables")
    chain = guard.published_chain
    assert guard.rules()[chain] == [
        ["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-A", chain, "-s", "10.249.0.0/16", "-j", "RETURN"],
        ["-A", chain, "-s", "192.0.2.0/24", "-j", "RETURN"],        # collapsed: the /32 is inside
        ["-A", chain, "-s", "198.51.100.4/32", "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", chain, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]]
    # Jumped to for traffic towards the pool, from DOCKER-USER (FORWARD: DNATed published ports).
    assert ("DOCKER-USER", ["-d", "10.249.0.0/16", "-j", chain]) in guard._jumps()


def test_the_hosts_resolver_inside_the_pool_stays_reachable_for_every_container():
    # Seen on this machine: the default pool 10.240.0.0/12 holds the resolver 10.255.255.53, and
    # the published-port chain refused every container's DNS (Docker's default bridge included).
    guard = NetworkGuard("10.240.0.0/12", blocked=[], dns_servers=["10.255.255.53"], iptables="iptables")
    chain = guard.published_chain
    rules = guard.rules()[chain]
    dns = [["-A", chain, "-d", "10.255.255.53/32", "-p", proto, "--dport", "53", "-j", "RETURN"]
           for proto in ("udp", "tcp")]
    assert all(rule in rules for rule in dns)
    first_reject = next(i for i, rule in enumerate(rules) if "REJECT" in rule)
    assert all(rules.index(rule) < first_reject for rule in dns)


def test_the_link_peer_replaces_the_previous_one_and_rewrites_only_on_a_change():
    calls = []

    def run(args, **kwargs):
        calls.append((args, kwargs.get("input")))
        return subprocess.CompletedProcess(args, 0, "", "")

    guard = NetworkGuard("10.249.0.0/16", blocked=[], dns_servers=[], iptables="iptables", run=run)
    assert guard.set_ingress_peer("198.51.100.4") is True
    written = [stdin for args, stdin in calls if args[0] == "iptables-restore"]
    assert len(written) == 1 and "-s 198.51.100.4/32 -j RETURN" in written[0]
    calls.clear()
    assert guard.set_ingress_peer("::ffff:198.51.100.4") is False and not calls  # same address
    assert guard.set_ingress_peer("198.51.100.9") is True
    written = [stdin for args, stdin in calls if args[0] == "iptables-restore"][0]
    assert "198.51.100.9/32" in written and "198.51.100.4" not in written
    # A link from the node itself adds nothing (the node is always allowed) and drops the old peer.
    assert guard.set_ingress_peer("127.0.0.1") is True and guard.ingress_sources() == []


def test_a_failed_rewrite_keeps_the_previous_peer():
    def run(args, **kwargs):
        return subprocess.CompletedProcess(args, 1 if args[0].endswith("-restore") else 0, "", "no")

    guard = NetworkGuard("10.249.0.0/16", ingress_peer="198.51.100.4", blocked=[], dns_servers=[],
                         iptables="iptables", run=run)
    with pytest.raises(NetworkGuardError):
        guard.set_ingress_peer("198.51.100.9")
    assert guard.ingress_sources() == [ipaddress.ip_network("198.51.100.4/32")]


@pytest.mark.parametrize(("address", "expected"), [
    ("192.0.2.1", "192.0.2.1/32"), ("::ffff:192.0.2.1", "192.0.2.1/32"), ("127.0.0.1", None),
    ("::1", None), ("2001:db8::1", None), ("not an address", None), (None, None)])
def test_a_peer_stands_for_its_ipv4_address_or_nothing(address, expected):
    assert peer_network(address) == (ipaddress.ip_network(expected) if expected else None)


def test_a_restarted_agent_lets_the_last_link_in_at_once_and_keeps_each_new_one(tmp_path, monkeypatch):
    """The link's address is kept in the state database: the rules installed at start allow it
    before the controller links again (Caddy keeps serving over an agent restart)."""
    monkeypatch.setattr(NetworkGuard, "_install", lambda self: None)  # no iptables here
    store = Store.open(tmp_path)
    try:
        settings = Settings(data_dir=tmp_path, subnet_pool=ipaddress.ip_network("10.249.0.0/16"))
        service = SimpleNamespace(guard=network_guard(settings, store), settings=settings, store=store)
        assert service.guard.ingress_sources() == []
        AgentService.link_up(service, "198.51.100.4")
        assert store.get_meta(INGRESS_PEER) == "198.51.100.4"
        assert network_guard(settings, store).ingress_sources() == [ipaddress.ip_network("198.51.100.4/32")]
        # Without `link` in AGENT_INGRESS_FROM the stored address counts for nothing.
        static = dataclasses.replace(settings, ingress_link=False,
                                     ingress_from=(ipaddress.ip_network("192.0.2.9/32"),))
        assert network_guard(static, store).ingress_sources() == [ipaddress.ip_network("192.0.2.9/32")]
    finally:
        store.close()
