"""`python -m agent` and `nullops-agent`: start the node agent.

Order: settings, logging, data directory, certificate, verifier, state, Docker engine, network
isolation rules, service, then the TLS endpoint; SIGTERM or SIGINT stops it in reverse. Bad
settings or a first start without AGENT_TOKEN end with exit code 2 and one line on stderr; other
start failures with 1.
This is the only place that exits.
"""
import logging
import signal
import sqlite3
import sys
import threading

from agent import __version__, protocol, tls
from agent.config import ConfigError, HelpRequested, load_settings, prepare_data_dir, resolve_node_id
from agent.credentials import Credentials, CredentialsError
from agent.netguard import INGRESS_PEER, NetworkGuard, NetworkGuardError
from agent.redaction import redact
from agent.server import AgentServer, ServerError, create_agent_app
from agent.store import EventHub, Store

log = logging.getLogger("nullops.agent")

EXIT_FAILED, EXIT_CONFIG = 1, 2


class _RedactingFormatter(logging.Formatter):
    """Belt and braces: whatever a log line carries, AGENT_TOKEN's value never reaches the log."""

    def __init__(self, fmt, secret_values):
        super().__init__(fmt)
        self._secret_values = [v for v in secret_values if v]

    def format(self, record):
        return redact(super().format(record), self._secret_values)


def _setup_logging(settings):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                             [settings.token]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


class _StartError(Exception):
    """A start failure with a message for the operator (no traceback)."""


def _say(message):
    print(f"nullops-agent: {message}", file=sys.stderr, flush=True)


def docker_service(settings, store, hub):
    """The real service on the local Docker engine (the default of `main`)."""
    import docker
    from docker.errors import DockerException

    from agent.cgroups import CgroupsUnavailable
    from agent.service import AgentService

    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, OSError) as exc:
        raise _StartError(f"cannot reach the Docker engine ({exc}); mount /var/run/docker.sock "
                          f"into the agent's container") from None
    guard = network_guard(settings, store)
    try:
        return AgentService(settings, store, hub, client, guard=guard)
    except CgroupsUnavailable as exc:
        raise _StartError(str(exc)) from None


def network_guard(settings, store=None):
    """The deployments' isolation rules, installed before any deployment runs; None when an
    operator turned them off. A node that cannot hold them refuses to start (never a silent
    fallback to an open network). With `link` in AGENT_INGRESS_FROM the last link's address
    (kept in `store`) may reach published ports at once, before the controller links again."""
    if not settings.network_isolation:
        if settings.publish_host in ("0.0.0.0", "::"):  # with the rules, only the ingress gets in
            log.warning("published ports listen on every address of this host: set AGENT_PUBLISH_HOST "
                        "(or AGENT_HOST) to the address Caddy reaches this node on, or anyone who can "
                        "reach the host bypasses the ingress")
        log.warning("network isolation is off: deployments can reach this host's ports, other "
                    "deployments' published ports, the LAN and metadata addresses")
        return None
    peer = store.get_meta(INGRESS_PEER) if store is not None and settings.ingress_link else None
    guard = NetworkGuard(settings.subnet_pool, egress_allow=settings.egress_allow,
                         ingress_from=settings.ingress_from, ingress_peer=peer)
    try:
        guard.install()
    except NetworkGuardError as exc:
        raise _StartError(f"network isolation: {exc}") from None
    return guard


def main(argv=None, service_factory=None):
    """Run the agent until SIGTERM/SIGINT; returns the exit code. `service_factory(settings,
    store, hub)` makes the service (tests pass their own; the default drives Docker)."""
    try:
        settings = load_settings(argv)
    except HelpRequested as help_:
        print(help_.text, end="")
        return 0
    except ConfigError as exc:
        _say(exc)
        return EXIT_CONFIG
    _setup_logging(settings)
    if settings.remove_network_rules:
        try:
            NetworkGuard(settings.subnet_pool).remove()
        except NetworkGuardError as exc:
            _say(exc)
            return EXIT_FAILED
        return 0
    # From here on SIGTERM/SIGINT stop the agent cleanly, also during a slow service start.
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s received; stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        prepare_data_dir(settings.data_dir)
        credentials = Credentials.load(settings.data_dir, settings.token)
        cert_path, key_path, cert_pem = tls.ensure_certificate(settings.data_dir)
        ssl_context = tls.server_context(cert_path, key_path)
    except (ConfigError, tls.TLSError, CredentialsError) as exc:
        _say(exc)
        return EXIT_CONFIG
    thumbprint = tls.thumbprint(cert_pem)

    try:
        store = Store.open(settings.data_dir)
        settings, warning = resolve_node_id(settings, store)
    except (sqlite3.Error, RuntimeError) as exc:
        _say(f"cannot open the state database in {settings.data_dir}: {exc}")
        return EXIT_FAILED
    log.info("nullops-agent %s, node id %s, data in %s", __version__, settings.node_id, settings.data_dir)
    if warning:
        log.warning("%s", warning)
    log.info("certificate thumbprint sha256: %s", thumbprint)

    hub = EventHub(store)
    server = service = None
    try:
        service = (service_factory or docker_service)(settings, store, hub)
        service.start()
        app = create_agent_app(settings, service, store, credentials, thumbprint, hub=hub)
        server = AgentServer(app, settings.host, settings.port, ssl_context).start()
    except (_StartError, ServerError) as exc:
        _say(exc)
        _stop(server, service, store)
        return EXIT_FAILED
    except Exception:
        log.exception("the agent could not start")
        _stop(server, service, store)
        return EXIT_FAILED
    log.info("listening on https://%s:%d (WebSocket %s)", settings.host, server.port,
             protocol.WEBSOCKET_PATH)

    while not stopping.wait(0.5):
        pass
    _stop(server, service, store)
    log.info("stopped")
    return 0


def _stop(server, service, store):
    """Stop what was started, each part even when another fails."""
    for name, part in (("server", server), ("service", service), ("store", store)):
        if part is None:
            continue
        try:
            part.close() if part is store else part.stop()
        except Exception:  # noqa: BLE001 - keep stopping the rest
            log.exception("stopping the %s failed", name)


if __name__ == "__main__":
    sys.exit(main())
