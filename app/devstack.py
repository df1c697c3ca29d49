"""`nullops dev` only: the local parts of the quickstart. A local agent on the local Docker
engine, registered as node "local" of environment "local" (base domain `localhost`, so URLs
like http://web.demo.local.localhost:8081 reach this machine), and Caddy as the ingress when it
is installed. Production runs agents and Caddy as their own services (docs/install.md)."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from sqlalchemy import select

from agent.protocol import verifier_for
from app.config import VAR_DIR
from app.controller.internal import parse_address
from app.extensions import db
from app.models import Environment, Node
from app.services import nodes
from app.services.catalog import keyring
from app.services.specs import url_pattern

AGENT_DIR = VAR_DIR / "agent"
CADDY_DIR = VAR_DIR / "caddy"
LOCAL = "local"
LOCAL_BASE_DOMAIN = "localhost"  # browsers and curl resolve *.localhost to this machine
AGENT_PORT = int(os.environ.get("NULLOPS_DEV_AGENT_PORT", "8092"))


def _say(message):
    print(f"[nullops dev] {message}", flush=True)


def _token():
    """The local agent's token: made once, kept 0600 under var/ like the dev secrets."""
    AGENT_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = AGENT_DIR / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def busy_addresses(web_host, web_port, internal):
    """The addresses `nullops dev` listens on (web, the controller's internal endpoint, the
    local agent) that something already holds: a second `nullops dev` would otherwise start its
    agent and controller beside the first one's and fail half-way."""
    busy = []
    for host, port in ((web_host, web_port), parse_address(internal), ("127.0.0.1", AGENT_PORT)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                sock.bind((host.strip("[]"), port))
            except OSError:
                busy.append(f"{host}:{port}")
    return busy


def _docker_answers():
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means: no local engine
        return False


def register_local_node(app, token):
    """Environment "local" and its node "local" pointing at the local agent (idempotent)."""
    with app.app_context():
        environment = db.session.scalar(select(Environment).where(Environment.name == LOCAL))
        if environment is None:
            environment = Environment(name=LOCAL, base_domain=LOCAL_BASE_DOMAIN,
                                      description="this machine (nullops dev)")
            db.session.add(environment)
            db.session.flush()
        node = db.session.scalar(select(Node).where(Node.environment_id == environment.id,
                                                    Node.name == LOCAL))
        if node is None:
            node = Node(environment_id=environment.id, name=LOCAL, host="127.0.0.1", port=AGENT_PORT)
            db.session.add(node)
        current = nodes.reveal_verifier(node) if node.verifier_ciphertext else None
        if current != verifier_for(token):
            node.verifier_ciphertext = keyring().encrypt(verifier_for(token), "node.verifier")
        node.host, node.port = "127.0.0.1", AGENT_PORT
        db.session.commit()


def start_agent(app):
    if not _docker_answers():
        _say("the Docker engine does not answer: no local agent, so no deployments "
             "(start dockerd, then restart `make run`)")
        return None
    token = _token()
    register_local_node(app, token)
    env = {**os.environ, "AGENT_TOKEN": token}
    isolation = local_isolation()
    log = open(AGENT_DIR / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--data-dir", str(AGENT_DIR / "data"), "--host", "127.0.0.1",
         "--port", str(AGENT_PORT), "--node-id", "nullops-dev", "--publish-host", "127.0.0.1",
         "--network-isolation", isolation],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    _say(f"local agent on https://127.0.0.1:{AGENT_PORT} (log: {AGENT_DIR / 'agent.log'})")
    return process


def local_isolation():
    """"on" when this process may write the host's firewall (root with iptables), as a node
    does; else "off" with a word, so `make run` works for a developer without root."""
    if os.environ.get("AGENT_NETWORK_ISOLATION") in ("on", "off"):
        return os.environ["AGENT_NETWORK_ISOLATION"]
    if os.geteuid() == 0 and (shutil.which("iptables") or shutil.which("iptables-nft")):
        return "on"
    _say("not root (or no iptables): the local agent runs without network isolation, so "
         "deployments can reach this machine's ports and LAN (docs/security.md)")
    return "off"


def _admin_answers(admin_url):
    try:
        urllib.request.urlopen(f"{admin_url}/config/", timeout=1).read()
        return True
    except (urllib.error.URLError, OSError):
        return False


def start_caddy(app):
    """Caddy with its admin API on localhost, when installed and not already running."""
    admin_url = app.config["NULLOPS_CADDY_ADMIN_URL"]
    if not admin_url:
        return None
    if _admin_answers(admin_url):
        _say(f"using the Caddy already running at {admin_url}")
        return None
    if not shutil.which("caddy"):
        _say("Caddy is not installed: deployments run, but their URLs do not answer "
             "(apt-get install caddy, then restart `make run`)")
        return None
    CADDY_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    admin = admin_url.split("://", 1)[-1]
    config = CADDY_DIR / "caddy.json"
    config.write_text(json.dumps({"admin": {"listen": admin}}))
    env = {**os.environ, "XDG_DATA_HOME": str(CADDY_DIR / "data"),
           "XDG_CONFIG_HOME": str(CADDY_DIR / "config")}
    log = open(CADDY_DIR / "caddy.log", "ab")  # noqa: SIM115 - lives as long as Caddy
    process = subprocess.Popen(["caddy", "run", "--config", str(config)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _admin_answers(admin_url):
        if process.poll() is not None or time.monotonic() > deadline:
            _say(f"Caddy did not start; see {CADDY_DIR / 'caddy.log'}")
            return None
        time.sleep(0.1)
    with app.app_context():
        pattern = url_pattern("demo", LOCAL, LOCAL_BASE_DOMAIN)
    _say(f"Caddy ingress on {app.config['NULLOPS_INGRESS_LISTEN']}: a deployment `demo` of "
         f"environment `{LOCAL}` answers at {pattern}/")
    return process


def stop(*processes):
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


class Supervised:
    """A helper process `nullops dev` started (the local agent, Caddy), started again when it
    exits: before, `make run` went on serving after its agent or Caddy died, and deployments
    stalled or stopped answering with nothing said (issue #14.8). One that keeps dying is given
    up on, with where to look."""

    GIVE_UP_AFTER = 5        # exits within WINDOW_S
    WINDOW_S = 60.0

    def __init__(self, name, start, log_path):
        self.name, self._start, self.log_path = name, start, log_path
        self.process = start()
        self._exits = []

    def check(self):
        if self.process is None or self.process.poll() is None:
            return
        code, now = self.process.returncode, time.monotonic()
        self._exits = [t for t in self._exits if now - t < self.WINDOW_S] + [now]
        if len(self._exits) >= self.GIVE_UP_AFTER:
            _say(f"the {self.name} exited {len(self._exits)} times within a minute (last code {code}); "
                 f"not starting it again: see {self.log_path}, then restart `make run`")
            self.process = None
            return
        _say(f"the {self.name} exited (code {code}); starting it again (log: {self.log_path})")
        self.process = self._start()


def supervise(children, stopping, interval_s=1.0):
    """Watch `children` (Supervised) in a thread until `stopping` (a threading.Event) is set."""
    def watch():
        while not stopping.wait(interval_s):
            for child in children:
                child.check()

    thread = threading.Thread(target=watch, name="dev-supervisor", daemon=True)
    thread.start()
    return thread


REGISTRY_PID = VAR_DIR / "registry" / "registry.pid"


def stop_demo_registry(pid_file=REGISTRY_PID):
    """The demo registry scripts/demo-images.sh started for `make run`, stopped with it (it was
    left running after `make run` ended). Only that process: its pid file must name a
    docker-registry; the next `make run` starts it again."""
    try:
        pid = int(pid_file.read_text().strip())
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"docker-registry" in command:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
