"""The agent's settings, from command-line arguments and `AGENT_*` environment variables.

An argument wins over its environment variable, which wins over the default. `AGENT_TOKEN` is
read from the environment only: an argument would show in `ps` and in the container's config.
Bad values raise ConfigError with a message that names the setting; only `__main__` exits.
"""
import argparse
import dataclasses
import ipaddress
import os
import re
import secrets
from pathlib import Path

DEFAULT_DATA_DIR = "/data"
DEFAULT_SECRETS_DIR = "/run/nullops-agent/secrets"
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A setting the agent cannot start with; the message says which and why."""


class HelpRequested(Exception):  # noqa: N818 - not an error: `--help` was asked for
    def __init__(self, text):
        super().__init__(text)
        self.text = text


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str = "0.0.0.0"
    port: int = 5000
    # repr=False: a Settings object in a log line or a traceback never shows the token.
    token: str | None = dataclasses.field(default=None, repr=False)
    node_id: str | None = None   # None until resolve_node_id() read or made the stored one
    subnet_pool: ipaddress.IPv4Network = ipaddress.IPv4Network("10.240.0.0/12")
    publish_host: str = "0.0.0.0"
    stop_grace: int = 2
    reconcile_interval: float = 10.0
    log_level: str = "info"
    # How a deployment's containers are held to its limits together (agent/cgroups.py):
    # "auto" one cgroup per deployment when the host allows it, else per-container shares that
    # sum to the limits (said at start); "on" the cgroup or no start; "off" the shares.
    deployment_cgroups: str = "auto"
    # Services' secret files (agent/secret_files.py): a folder on a tmpfs, the same path for the
    # agent and the engine. Not a tmpfs: services with secret files are refused, never written.
    secrets_dir: Path = Path(DEFAULT_SECRETS_DIR)
    # Host firewall rules that keep deployments off the host's ports, each other's published
    # ports, the LAN and metadata addresses (agent/netguard.py); needs NET_ADMIN in the host's
    # network namespace. `egress_allow`: private ranges deployments may still reach.
    network_isolation: bool = True
    egress_allow: tuple = ()
    # Who besides the node may open connections to published ports (the ingress): these ranges,
    # and with `ingress_link` the address the control plane's link comes from (agent/netguard.py).
    ingress_from: tuple = ()
    ingress_link: bool = True
    remove_network_rules: bool = False   # a one-shot: remove the rules and exit


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit; library code does not exit
        raise ConfigError(message)


def _parser():
    parser = _Parser(prog="nullops-agent", add_help=False,
                     description="The NullOps node agent: a TLS WebSocket for the control plane. "
                                 "The node token is read from AGENT_TOKEN (environment only).")
    add = parser.add_argument
    add("-h", "--help", action="store_true", help="show this help and exit")
    add("--data-dir", help=f"certificate, key, verifier and state (env AGENT_DATA_DIR; {DEFAULT_DATA_DIR})")
    add("--host", help="address to listen on (env AGENT_HOST; 0.0.0.0)")
    add("--port", help="TLS port (env AGENT_PORT; 5000; 0 picks a free port)")
    add("--node-id", help="id in the labels of every Docker object (env AGENT_NODE_ID; generated once)")
    add("--subnet-pool", help="private IPv4 range for deployment networks (env AGENT_SUBNET_POOL; "
                              "10.240.0.0/12)")
    add("--publish-host", help="address exposed ports are published on: the one Caddy reaches this node "
                               "on (env AGENT_PUBLISH_HOST; --host when that is one address, else 0.0.0.0)")
    add("--stop-grace", help="seconds between SIGTERM and SIGKILL for a service (env AGENT_STOP_GRACE; 2)")
    add("--reconcile-interval", help="seconds between reconcile rounds (env AGENT_RECONCILE_INTERVAL; 10)")
    add("--log-level", help=f"{', '.join(LOG_LEVELS)} (env AGENT_LOG_LEVEL; info)")
    add("--secrets-dir", help="services' secret files, on a tmpfs, the same path on the host "
                              f"(env AGENT_SECRETS_DIR; {DEFAULT_SECRETS_DIR})")
    add("--deployment-cgroups", help="auto, on or off: one cgroup per deployment holds its containers "
                                     "to its limits (needs the host's /sys/fs/cgroup writable); auto "
                                     "falls back to per-container shares (env AGENT_DEPLOYMENT_CGROUPS; "
                                     "auto)")
    add("--network-isolation", help="on: firewall rules keep deployments off this host's ports, the LAN "
                                    "and metadata addresses (needs NET_ADMIN and the host's network; "
                                    "env AGENT_NETWORK_ISOLATION; on)")
    add("--egress-allow", help="comma-separated private ranges deployments may still reach, e.g. a "
                               "shared database server (env AGENT_EGRESS_ALLOW; none)")
    add("--ingress-from", help="who besides this node may connect to published ports: comma-separated "
                               "IPv4 ranges (Caddy's addresses) and `link`, the address the control "
                               "plane links from (env AGENT_INGRESS_FROM; link)")
    add("--remove-network-rules", action="store_true",
        help="remove this subnet pool's isolation rules from the host, then exit")
    return parser


def _number(name, text, low, high, integer=False):
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, not {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {text!r}")
    return value


def _ip(name, text):
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{name} must be an IP address, not {text!r}") from None


def _pool(name, text):
    try:
        pool = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if pool.version != 4 or not pool.is_private or pool.prefixlen > 24:
        raise ConfigError(f"{name} must be a private IPv4 range of at least a /24, not {text!r}")
    return pool


def _ranges(name, text):
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ConfigError(f"{name} must be IPv4 addresses or ranges like 10.1.2.0/24, "
                              f"separated by commas, not {part!r}") from None
        if net.version != 4:
            raise ConfigError(f"{name} takes IPv4 ranges only (deployment networks are IPv4), not {part!r}")
        nets.append(net)
    return tuple(nets)


def node_id_problem(value):
    if not NODE_ID.match(value):
        return "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def load_settings(argv=None, environ=None):
    """Settings from `argv` (without the program name) and `environ`; raises ConfigError or
    HelpRequested."""
    env = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    if args.help:
        raise HelpRequested(parser.format_help())

    def pick(arg, var, default):
        """(where the value came from, the value): the name goes into error messages."""
        if arg is not None:
            return f"--{var.removeprefix('AGENT_').lower().replace('_', '-')}", arg
        if env.get(var, "") != "":
            return var, env[var]
        return var, default

    _, data_dir = pick(args.data_dir, "AGENT_DATA_DIR", DEFAULT_DATA_DIR)
    host_name, host = pick(args.host, "AGENT_HOST", "0.0.0.0")
    if not host.strip():
        raise ConfigError(f"{host_name} must not be empty")
    port = _number(*pick(args.port, "AGENT_PORT", "5000"), 0, 65535, integer=True)
    node_name, node_id = pick(args.node_id, "AGENT_NODE_ID", None)
    if node_id is not None and node_id_problem(node_id):
        raise ConfigError(f"{node_name} {node_id_problem(node_id)}, not {node_id!r}")
    pool = _pool(*pick(args.subnet_pool, "AGENT_SUBNET_POOL", "10.240.0.0/12"))
    publish_host = _ip(*pick(args.publish_host, "AGENT_PUBLISH_HOST", _default_publish_host(host)))
    # Whole seconds: Docker's StopTimeout and `stop -t` take integers (a float is refused).
    grace = _number(*pick(args.stop_grace, "AGENT_STOP_GRACE", "2"), 0, 3600, integer=True)
    interval = _number(*pick(args.reconcile_interval, "AGENT_RECONCILE_INTERVAL", "10"), 1, 86400)
    level_name, level = pick(args.log_level, "AGENT_LOG_LEVEL", "info")
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{level_name} must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    cgroups_name, cgroups = pick(args.deployment_cgroups, "AGENT_DEPLOYMENT_CGROUPS", "auto")
    if cgroups.lower() not in ("auto", "on", "off"):
        raise ConfigError(f"{cgroups_name} must be auto, on or off, not {cgroups!r}")
    _, secrets_dir = pick(args.secrets_dir, "AGENT_SECRETS_DIR", DEFAULT_SECRETS_DIR)
    isolation_name, isolation = pick(args.network_isolation, "AGENT_NETWORK_ISOLATION", "on")
    if isolation.lower() not in ("on", "off"):
        raise ConfigError(f"{isolation_name} must be on or off, not {isolation!r}")
    egress_allow = _ranges(*pick(args.egress_allow, "AGENT_EGRESS_ALLOW", ""))
    ingress_name, ingress = pick(args.ingress_from, "AGENT_INGRESS_FROM", "link")
    parts = [part.strip() for part in ingress.split(",")]
    ingress_link = "link" in parts
    ingress_from = _ranges(ingress_name, ",".join(part for part in parts if part != "link"))
    if not ingress_link and not ingress_from:
        raise ConfigError(f"{ingress_name} must name Caddy's addresses (IPv4 ranges) or `link`, "
                          f"not {ingress!r}")
    token = env.get("AGENT_TOKEN") or None
    if token is not None and token != token.strip():
        raise ConfigError("AGENT_TOKEN has leading or trailing whitespace; paste the token exactly")
    return Settings(
        data_dir=Path(data_dir).expanduser().absolute(), host=host, port=port, token=token,
        node_id=node_id, subnet_pool=pool, publish_host=publish_host, stop_grace=grace,
        reconcile_interval=interval, log_level=level.lower(),
        deployment_cgroups=cgroups.lower(), network_isolation=isolation.lower() == "on",
        egress_allow=egress_allow, ingress_from=ingress_from, ingress_link=ingress_link,
        remove_network_rules=args.remove_network_rules,
        secrets_dir=Path(secrets_dir).expanduser().absolute(),
    )


def _default_publish_host(listen_host):
    """Published ports go where the agent listens when that is one address: the address the
    control plane reaches the node on, which is the one Caddy uses (issue 17 item 1; before,
    0.0.0.0 let anyone on the LAN bypass Caddy). Listening on every address, they do too."""
    try:
        address = ipaddress.ip_address(listen_host.strip("[]"))
    except ValueError:
        return "0.0.0.0"
    return "0.0.0.0" if address.is_unspecified else str(address)


def prepare_data_dir(path):
    """Create the data directory (0700) or tighten an existing one; ConfigError when impossible."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the data directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"the data directory {path} is not writable")
    return path


def resolve_node_id(settings, store):
    """Settings with the node id: the configured one, else the stored one, else a new one that is
    stored. The id is in the labels of every Docker object the agent makes, so it must not
    change by accident; a configured id that differs from the stored one wins, with a warning
    returned for the log."""
    stored = store.get_meta("node_id")
    warning = None
    if settings.node_id is not None:
        if stored is not None and stored != settings.node_id:
            warning = (f"node id changed from {stored!r} to {settings.node_id!r}: objects labelled "
                       f"with the old id are no longer this agent's")
        node_id = settings.node_id
    else:
        node_id = stored or f"node-{secrets.token_hex(6)}"
    if stored != node_id:
        store.set_meta("node_id", node_id)
    return dataclasses.replace(settings, node_id=node_id), warning
