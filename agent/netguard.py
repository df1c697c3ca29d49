"""Host-level network isolation of deployments (issue 17 item 1).

Docker already drops traffic between two bridge networks, but not what a container sends to the
host itself: a connection from deployment A to its gateway (or to any of the host's addresses)
on B's published port is taken by Docker's userland proxy and handed to B, and the agent's port
answers the same way. Nor does it stop a deployment from reaching the node's LAN or a cloud's
metadata address (169.254.169.254). And from outside, any host that reaches the node's address
reaches the published ports without going through Caddy. The agent closes those paths with three
chains of its own in the host's `filter` table, keyed by its subnet pool (agents sharing an engine
and a pool share them):

- `NULLOPS-IN-<tag>`, jumped to from INPUT for sources in the pool: replies to connections the
  host opened (Caddy through a published port, the agent's readiness probes) pass; everything a
  deployment opens to the host itself is refused (published ports, the agent port, SSH, ...).
- `NULLOPS-FWD-<tag>`, jumped to from Docker's DOCKER-USER chain (which Docker keeps first in
  FORWARD and never flushes) for sources in the pool: replies pass, traffic inside the pool is
  left to Docker (same network: allowed; another network: Docker's isolation drops it), DNS to
  the host's name servers and the operator's `--egress-allow` ranges pass, and private, shared
  (100.64/10), link-local (metadata) and the host's directly connected networks are refused.
  The internet stays reachable: deployments may call external APIs.
- `NULLOPS-PUB-<tag>`, jumped to from DOCKER-USER for destinations in the pool: who may open a
  connection to a deployment's published port from outside the node. Replies and traffic inside
  the pool pass; so do the ingress's sources (below); everything else is refused, so a LAN host
  cannot bypass Caddy.

How a published port is reached (verified on Docker 20.10, iptables-nft, userland proxy on, ports
published on one IPv4 address): a connection from another host is DNATed in nat PREROUTING
(Docker's `-m addrtype --dst-type LOCAL -j DOCKER`) to the container's address and goes through
FORWARD, hence DOCKER-USER, with the container as its destination, so the PUB chain sees it (so
does a LAN host that routes to a container's address directly, which Docker 20.10 lets through).
docker-proxy is reached only from the node itself (loopback, which nat OUTPUT leaves alone, and
the container's own bridge); the node's own connections (Caddy beside an agent, `make run`, the
agent's readiness probes) leave through OUTPUT and never cross FORWARD: the node is always
allowed without a rule. A port published on an IPv6 address is served by docker-proxy alone
(Docker 20.10 writes no ip6tables rules) and these IPv4 rules do not cover it.

The ingress's sources (`--ingress-from`, AGENT_INGRESS_FROM): IPv4 ranges, and the word `link`,
the default, which allows the address the control plane's authenticated link comes from. Caddy
runs beside the active controller (docs/ingress.md) and dials the same node, so it leaves from the
same address; the agent sees that address on every link without any setting, which makes it the
sensible default. It is sound because it is taken only after the peer proved the node token (the
holder of that token is the control plane, which tells the agent what to run anyway), it replaces
the previous link's address instead of accumulating addresses, and it is kept in the state
database so a restarted agent lets Caddy in before the controller links again. When the link
comes from elsewhere than Caddy (Caddy on another host, NAT or a proxy between the control plane
and the node, controllers on several hosts), list Caddy's addresses instead; without `link` the
allow-list is static.

Each chain is written in one `iptables-restore --noflush` transaction (never half-filled), the
jumps are checked before they are added, so installing again changes nothing. The rules stay when
the agent stops (its deployments keep running); `nullops-agent --remove-network-rules` removes
them. Commands take argument lists, never a shell string.

iptables has two backends that do not see each other's rules (nf_tables and legacy); the agent's
image may not pick the host's by default, so the guard uses the one that holds Docker's
DOCKER-USER chain, as Kubernetes' iptables-wrapper does. Verified on Debian 12: Docker 20.10
with iptables 1.8.9 on the nf_tables backend.
"""
import hashlib
import ipaddress
import logging
import shutil
import subprocess
import threading

log = logging.getLogger(__name__)

# Where a deployment must not go unless the operator allows it (--egress-allow): the private
# ranges of RFC 1918, shared address space (RFC 6598; Alibaba's metadata is 100.100.100.200),
# link-local (RFC 3927; the metadata address of AWS, GCP, Azure, OpenStack), loopback and the
# IETF's reserved ranges that some networks route internally.
BLOCKED = tuple(ipaddress.ip_network(net) for net in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4"))
TIMEOUT_S = 20
INGRESS_PEER = "ingress_peer"   # the state database's key for the last link's address
HINT = ("run the agent in the host's network namespace with NET_ADMIN (`docker run --network host "
        "--cap-add NET_ADMIN`, or as root on the host) on an engine that manages iptables (its "
        "default), or turn the isolation off with AGENT_NETWORK_ISOLATION=off (docs/security.md)")


class NetworkGuardError(Exception):
    """The rules cannot be read or written; the message says why and what to do."""


def connected_networks(route_file="/proc/net/route"):
    """IPv4 networks the host is directly attached to (routes without a gateway): its LANs.
    In the host's network namespace these are the node's own; the default route is left out."""
    found = []
    try:
        with open(route_file) as f:
            next(f)
            for line in f:
                fields = line.split()
                dest, gateway, mask = (ipaddress.IPv4Address(int(fields[i], 16).to_bytes(4, "little"))
                                       for i in (1, 2, 7))
                net = ipaddress.ip_network(f"{dest}/{mask}", strict=False)
                if net.prefixlen and int(gateway) == 0:
                    found.append(net)
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return found


RESOLV_CONFS = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")


def name_servers(resolv_confs=RESOLV_CONFS):
    """The host's IPv4 DNS servers: Docker's embedded DNS forwards a container's queries to them
    from inside the container, so they must stay reachable even on a private address. Docker
    reads systemd-resolved's upstream file when /etc/resolv.conf names only 127.0.0.53; so do we."""
    found = []
    for path in resolv_confs:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                try:
                    address = ipaddress.ip_address(fields[1])
                except ValueError:
                    continue
                if address.version == 4 and not address.is_loopback:
                    found.append(address)
    return found


def docker_iptables(run=subprocess.run):
    """The iptables program whose backend holds Docker's DOCKER-USER chain, else `iptables`
    (whose error then says what is wrong)."""
    for program in ("iptables-nft", "iptables-legacy"):
        if shutil.which(program) is None:
            continue
        try:
            found = run([program, "-w", "-t", "filter", "-S", "DOCKER-USER"], capture_output=True,
                        text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return program
    return "iptables"


def peer_network(address):
    """The /32 an allowed link peer stands for, or None: nothing to add for loopback (the node
    itself is always allowed) or a pure IPv6 peer (the rules are IPv4); an IPv4-mapped IPv6
    address (an agent listening on `::`) counts as its IPv4 address."""
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(str(address).split("%")[0].strip("[]"))
    except ValueError:
        return None
    if ip.version == 6:
        ip = ip.ipv4_mapped
    if ip is None or ip.is_loopback or ip.is_unspecified:
        return None
    return ipaddress.ip_network(ip)


class NetworkGuard:
    """The isolation rules of one subnet pool."""

    def __init__(self, pool, *, egress_allow=(), ingress_from=(), ingress_peer=None, blocked=None,
                 dns_servers=None, iptables=None, run=subprocess.run):
        self.pool = ipaddress.ip_network(pool)
        self.egress_allow = [ipaddress.ip_network(net) for net in egress_allow]
        self.ingress_from = [ipaddress.ip_network(net) for net in ingress_from]
        self.ingress_peer = peer_network(ingress_peer)
        self._lock = threading.Lock()  # the link's thread and the reconcile thread both install
        extra = connected_networks() if blocked is None else [ipaddress.ip_network(n) for n in blocked]
        # Collapsed and sorted: the same host gives the same rules, so a reinstall is a no-op.
        self.blocked = sorted(ipaddress.collapse_addresses([*BLOCKED, *extra]))
        servers = name_servers() if dns_servers is None else dns_servers
        self.dns_servers = sorted({ipaddress.ip_address(str(server)) for server in servers})
        tag = hashlib.sha256(str(self.pool).encode()).hexdigest()[:8]
        self.input_chain = f"NULLOPS-IN-{tag}"
        self.forward_chain = f"NULLOPS-FWD-{tag}"
        self.published_chain = f"NULLOPS-PUB-{tag}"
        self.iptables = iptables or docker_iptables(run)
        self._run = run

    # --- the rules ---------------------------------------------------------------------------
    def _jumps(self):
        src = str(self.pool)
        return [("INPUT", ["-s", src, "-j", self.input_chain]),
                ("DOCKER-USER", ["-s", src, "-j", self.forward_chain]),
                ("DOCKER-USER", ["-d", src, "-j", self.published_chain])]

    def ingress_sources(self):
        """Who besides the node may open connections to published ports, collapsed and sorted."""
        peer = [self.ingress_peer] if self.ingress_peer is not None else []
        return sorted(ipaddress.collapse_addresses([*self.ingress_from, *peer]))

    def _dns(self, chain):
        return [["-A", chain, "-d", f"{server}/32", "-p", proto, "--dport", "53", "-j", "RETURN"]
                for server in self.dns_servers for proto in ("udp", "tcp")]

    def _allowed(self, chain):
        return [["-A", chain, "-d", str(net), "-j", "RETURN"] for net in self.egress_allow]

    def _reject(self, chain, *match):
        # REJECT, not DROP: a deployment calling a refused address fails at once ("connection
        # refused") instead of hanging until its own timeout.
        return [["-A", chain, *match, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
                ["-A", chain, *match, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]]

    def rules(self):
        """{chain: [rule arguments]}: what the chains hold once installed."""
        replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
        into_host = [["-A", self.input_chain, *replies], *self._dns(self.input_chain),
                     *self._allowed(self.input_chain), *self._reject(self.input_chain)]
        forward = [["-A", self.forward_chain, *replies],
                   ["-A", self.forward_chain, "-d", str(self.pool), "-j", "RETURN"],
                   *self._dns(self.forward_chain), *self._allowed(self.forward_chain)]
        for net in self.blocked:
            forward += self._reject(self.forward_chain, "-d", str(net))
        # The host's resolvers may lie inside the pool's range (here 10.255.255.53 is in the
        # default 10.240.0.0/12): they are no container, and every container's DNS goes there.
        published = [["-A", self.published_chain, *replies], *self._dns(self.published_chain),
                     ["-A", self.published_chain, "-s", str(self.pool), "-j", "RETURN"],
                     *[["-A", self.published_chain, "-s", str(net), "-j", "RETURN"]
                       for net in self.ingress_sources()],
                     *self._reject(self.published_chain)]
        return {self.input_chain: into_host, self.forward_chain: forward,
                self.published_chain: published}

    # --- iptables ----------------------------------------------------------------------------
    def _call(self, args, stdin=None, check=True, program=None):
        program = program or self.iptables
        try:
            result = self._run([program, *args], input=stdin, capture_output=True, text=True,
                               timeout=TIMEOUT_S)
        except FileNotFoundError:
            raise NetworkGuardError(f"{self.iptables} is not installed on this node: install it "
                                    f"(Debian: apt-get install iptables), or {HINT}") from None
        except subprocess.TimeoutExpired:
            raise NetworkGuardError(f"{self.iptables} did not answer within {TIMEOUT_S} s "
                                    f"(another program holds the xtables lock?)") from None
        if check and result.returncode != 0:
            raise NetworkGuardError(f"{program} {' '.join(args)} failed: "
                                    f"{(result.stderr or result.stdout).strip()[:300]}; {HINT}")
        return result.returncode == 0

    def check(self):
        """Refuse early, with the way out, when the rules cannot work here: no iptables, no
        NET_ADMIN, or not the host's network namespace (Docker's DOCKER-USER chain is missing)."""
        try:
            self._call(["-w", "-t", "filter", "-S", "DOCKER-USER"])
        except NetworkGuardError as exc:
            raise NetworkGuardError(f"cannot read Docker's DOCKER-USER chain: {exc}") from None

    def installed(self):
        """True when both chains are in place and jumped to."""
        return all(self._call(["-w", "-C", chain, *rule], check=False) for chain, rule in self._jumps())

    def install(self):
        """Write the chains (atomically) and make sure they are jumped to. Idempotent."""
        with self._lock:
            self._install()

    def set_ingress_peer(self, address):
        """The control plane linked from `address`: let it (Caddy beside it) reach published ports
        instead of the previous link's address. Rewrites the chains only when that changes;
        returns True when it did. A loopback or IPv6 peer allows nothing more than the node."""
        network = peer_network(address)
        with self._lock:
            if network == self.ingress_peer:
                return False
            previous, self.ingress_peer = self.ingress_peer, network
            try:
                self._install()
            except NetworkGuardError:
                self.ingress_peer = previous
                raise
        return True

    def _install(self):
        self.check()
        lines = ["*filter"]
        for chain, rules in self.rules().items():
            lines.append(f":{chain} - [0:0]")  # declared in --noflush mode: created or emptied
            lines += [" ".join(rule) for rule in rules]
        lines.append("COMMIT")
        self._call(["-w", "--noflush"], stdin="\n".join(lines) + "\n",
                   program=f"{self.iptables}-restore")
        for chain, rule in self._jumps():
            if not self._call(["-w", "-C", chain, *rule], check=False):
                self._call(["-w", "-I", chain, "1", *rule])
        log.info("network isolation of %s in place (chains %s, %s, %s); DNS servers allowed: %s; "
                 "egress allowed: %s; published ports open to this node and: %s", self.pool,
                 self.input_chain, self.forward_chain, self.published_chain,
                 ", ".join(map(str, self.dns_servers)) or "none",
                 ", ".join(map(str, self.egress_allow)) or "none",
                 ", ".join(map(str, self.ingress_sources())) or "nobody else")
        if not self.dns_servers:
            log.warning("no DNS server outside loopback found in %s: if deployments cannot resolve "
                        "names, add the host's upstream DNS servers to AGENT_EGRESS_ALLOW",
                        " or ".join(RESOLV_CONFS))

    def ensure(self):
        """Put the rules back when something removed them (an iptables flush, a firewall
        reload); cheap when they are there. Returns True when it had to reinstall."""
        if self.installed():
            return False
        log.warning("the network isolation rules of %s were missing; installing them again", self.pool)
        self.install()
        return True

    def remove(self):
        """Remove the jumps and the chains; what is already gone is fine. Idempotent."""
        self.check()
        for chain, rule in self._jumps():
            while self._call(["-w", "-C", chain, *rule], check=False):
                self._call(["-w", "-D", chain, *rule])
        for chain in (self.input_chain, self.forward_chain, self.published_chain):
            if self._call(["-w", "-S", chain], check=False):
                self._call(["-w", "-F", chain])
                self._call(["-w", "-X", chain])
        log.info("network isolation rules of %s removed", self.pool)
