"""Wait until a service container is ready, noticing it within tens of milliseconds.

Docker HEALTHCHECK intervals (seconds) and compose v1's 100 ms inspect polling are what this
avoids: probes go straight to the container's address on the deployment network (tcp every
10 ms, http every 20 ms), log patterns are matched on the followed log stream as lines arrive,
exec probes run every 50 ms. A container that dies is noticed through the engine's event stream
(a "die" event for the container), not by inspecting it between attempts.

When the agent itself runs in a container of its own network, that container is connected to
the deployment network for the probe and disconnected afterwards; in the host's network (the way
it is run, for its isolation rules) it reaches the bridges directly, like a process on the host.
"""
import contextlib
import http.client
import os
import re
import socket
import threading
import time

from docker.errors import APIError, NotFound

from agent import labels as L
from agent.docker_exec import iter_lines
from agent.errors import UNAVAILABLE, Cancelled, ReadinessError, engine_call
from agent.spec import DEFAULT_READINESS_TIMEOUT_S

TCP_INTERVAL_S = 0.01
HTTP_INTERVAL_S = 0.02
EXEC_INTERVAL_S = 0.05
TICK_S = 0.01   # how often waits look at cancel, death and the deadline
AGENT_CONTAINER_ENV = "NULLOPS_AGENT_CONTAINER_ID"


def describe(readiness):
    kind = readiness.get("type", "running")
    if kind == "tcp":
        return f"tcp port {readiness['port']}"
    if kind == "http":
        return f"http GET :{readiness['port']}{readiness.get('path', '/')}"
    if kind == "log":
        return f"log pattern {readiness['pattern']!r}"
    if kind == "exec":
        return f"exec {readiness['command'][0] if readiness['command'] else ''}"
    return "running"


class _DeathWatch:
    """Sets `died` when the engine reports the container's "die" event. Subscribed with
    `since` = now, then the state is inspected once: a death before, during or after the
    subscription is seen, and an old "die" of a restarted container is not."""

    def __init__(self, client, container):
        self.client = client
        self.container = container
        self.died = threading.Event()
        self.exit_code = None
        self._stream = None
        self._thread = None

    def __enter__(self):
        with engine_call(f"watching container {self.container.name}"):
            self._stream = self.client.events(since=f"{time.time():.6f}", decode=True,
                                              filters={"container": self.container.id, "event": "die"})
        self._thread = threading.Thread(target=self._watch, name="readiness-death-watch", daemon=True)
        self._thread.start()
        try:
            with engine_call(f"inspecting container {self.container.name}"):
                self.container.reload()
        except BaseException:
            self.__exit__()
            raise
        state = self.container.attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            self.exit_code = state.get("ExitCode")
            self.died.set()
        return self

    def _watch(self):
        try:
            for event in self._stream:
                if event.get("status") == "die" or event.get("Action") == "die":
                    code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                    self.exit_code = int(code) if code and code.isdigit() else code
                    self.died.set()
                    return
        except (APIError, *UNAVAILABLE, OSError, ValueError, AttributeError):
            pass  # closed by __exit__, or the engine went away (the probe's own errors show that)

    def __exit__(self, *exc):
        self._stream.close()
        self._thread.join(timeout=1)


def _agent_container_id(client):
    """The agent's own container when it runs in one, else None (it runs on the host)."""
    candidate = os.environ.get(AGENT_CONTAINER_ENV)
    if not candidate and os.path.exists("/.dockerenv"):
        candidate = socket.gethostname()  # Docker names a container's host after its short id
    if not candidate:
        return None
    try:
        container = client.containers.get(candidate)
    except NotFound:
        return None
    except (APIError, *UNAVAILABLE):
        return None
    if (container.attrs.get("HostConfig") or {}).get("NetworkMode") == "host":
        return None  # the host's routes reach every bridge; a host-network container cannot join one
    return container.id


# Connections of the agent's container to deployment networks, counted so that concurrent
# probes on one network share one connection and the last one disconnects.
_attach_lock = threading.Lock()
_attached = {}  # network id -> [users, connected by us]


@contextlib.contextmanager
def _reachable(client, network):
    """Make `network` reachable from where the agent runs, for the duration of the block."""
    agent_id = _agent_container_id(client)
    if agent_id is None:
        yield  # on the host: Linux routes to Docker's bridge networks
        return
    with _attach_lock:
        entry = _attached.setdefault(network.id, [0, False])
        if entry[0] == 0:
            network.reload()
            if agent_id not in (network.attrs.get("Containers") or {}):
                with engine_call("connecting the agent to the deployment network"):
                    network.connect(agent_id)
                entry[1] = True
        entry[0] += 1
    try:
        yield
    finally:
        with _attach_lock:
            entry[0] -= 1
            if entry[0] == 0:
                _attached.pop(network.id, None)
                if entry[1]:
                    try:
                        network.disconnect(agent_id, force=True)
                    except (APIError, *UNAVAILABLE):
                        pass


def _deployment_network(client, executor, container):
    """(network object or None, the container's IP on it)."""
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    name = None
    if executor is not None and container.labels.get(L.DEPLOYMENT):
        name = executor.network_name(container.labels[L.DEPLOYMENT])
    if name not in networks:
        name = next((n for n in networks if n.startswith("nullops-")), next(iter(networks), None))
    if name is None or not networks[name].get("IPAddress"):
        return None, None
    with engine_call(f"inspecting network {name}"):
        network = client.networks.get(networks[name].get("NetworkID") or name)
    return network, networks[name]["IPAddress"]


class _Waiter:
    def __init__(self, container, readiness, cancel, deadline, death, deadline_s):
        self.container = container
        self.readiness = readiness
        self.cancel = cancel
        self.deadline = deadline
        self.death = death
        self.deadline_s = deadline_s
        self.last_error = None

    def check(self):
        """Raise when the wait must end: cancelled, the container died, or the deadline."""
        if self.cancel.is_set():
            raise Cancelled(f"waiting for {self.container.name} to be ready was cancelled")
        if self.death.died.is_set():
            raise ReadinessError("exited", f"{self.container.name} exited (code {self.death.exit_code}) "
                                 f"before it was ready ({describe(self.readiness)})")
        if time.monotonic() >= self.deadline:
            detail = f"; last attempt: {self.last_error}" if self.last_error else ""
            raise ReadinessError("not_ready", f"{self.container.name} was not ready after "
                                 f"{self.deadline_s:g} s ({describe(self.readiness)}{detail})")

    def pause(self, seconds):
        end = min(time.monotonic() + seconds, self.deadline)
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.cancel.wait(min(left, TICK_S))

    def remaining(self, cap):
        return max(0.05, min(cap, self.deadline - time.monotonic()))

    def until(self, event):
        """Block until `event` is set, checking cancel, death and the deadline meanwhile."""
        while not event.wait(TICK_S):
            self.check()


def _try_tcp(waiter, ip, port):
    try:
        with socket.create_connection((ip, port), timeout=waiter.remaining(1.0)):
            return True
    except OSError as exc:
        waiter.last_error = str(exc) or type(exc).__name__
        return False


def _try_http(waiter, ip, readiness):
    conn = http.client.HTTPConnection(ip, readiness["port"], timeout=waiter.remaining(2.0))
    try:
        conn.request("GET", readiness.get("path", "/"), headers={"User-Agent": "nullops-agent-readiness"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        waiter.last_error = str(exc) or type(exc).__name__
        return False
    finally:
        conn.close()
    expected = readiness.get("status")
    if (status == expected) if expected else 200 <= status < 400:
        return True
    waiter.last_error = f"HTTP {status}"
    return False


def _wait_log(client, container, waiter, pattern):
    regex = re.compile(pattern)
    matched, stop = threading.Event(), threading.Event()
    with engine_call(f"following logs of {container.name}"):
        stream = container.logs(stdout=True, stderr=True, stream=True, follow=True)

    def read():
        try:
            for line in iter_lines(stream, stop):
                if regex.search(line):
                    matched.set()
                    return
        except (APIError, *UNAVAILABLE, OSError) as exc:
            waiter.last_error = str(exc)

    reader = threading.Thread(target=read, name="readiness-log", daemon=True)
    reader.start()
    try:
        waiter.until(matched)
    finally:
        stop.set()
        reader.join(timeout=1)


def _wait_exec(client, container, waiter, command):
    api = client.api

    def attempt(result):
        try:
            exec_id = api.exec_create(container.id, command, stdout=True, stderr=True)["Id"]
            output = api.exec_start(exec_id)
            code = api.exec_inspect(exec_id).get("ExitCode")
            result["ok"] = code == 0
            if code != 0:
                text = output.decode("utf-8", errors="replace").strip()[-200:]
                waiter.last_error = f"exit code {code}" + (f": {text}" if text else "")
        except (APIError, *UNAVAILABLE) as exc:  # 409 when the container is not running
            waiter.last_error = str(exc)
        finally:
            result["done"].set()

    while True:
        # Each attempt in a thread: a hanging command must not hold up cancel or the deadline.
        result = {"ok": False, "done": threading.Event()}
        threading.Thread(target=attempt, args=(result,), name="readiness-exec", daemon=True).start()
        waiter.until(result["done"])
        if result["ok"]:
            return
        waiter.pause(EXEC_INTERVAL_S)


def wait_ready(executor_or_client, container, readiness, *, cancel, deadline_s=None):
    """Return (seconds waited) once `container` passes its readiness check (spec types
    running, tcp, http, log, exec). Raises ReadinessError "exited" when the container dies
    first, "not_ready" after `deadline_s` seconds (default: the check's `timeout_s`, else
    DEFAULT_READINESS_TIMEOUT_S), and Cancelled soon after `cancel` is set."""
    client = getattr(executor_or_client, "client", executor_or_client)
    executor = executor_or_client if client is not executor_or_client else None
    readiness = readiness or {"type": "running"}
    if deadline_s is None:
        deadline_s = readiness.get("timeout_s", DEFAULT_READINESS_TIMEOUT_S)
    started = time.monotonic()
    kind = readiness.get("type", "running")
    if kind not in ("running", "tcp", "http", "log", "exec"):
        raise ValueError(f"unknown readiness type {kind!r}")
    with _DeathWatch(client, container) as death:
        waiter = _Waiter(container, readiness, cancel, started + deadline_s, death, deadline_s)
        waiter.check()
        if kind == "running":
            while container.status != "running":  # only before a start someone else makes
                waiter.pause(0.05)
                with engine_call(f"inspecting container {container.name}"):
                    container.reload()
            return time.monotonic() - started
        if kind == "log":
            _wait_log(client, container, waiter, readiness["pattern"])
            return time.monotonic() - started
        if kind == "exec":
            _wait_exec(client, container, waiter, list(readiness["command"]))
            return time.monotonic() - started
        network, ip = _deployment_network(client, executor, container)
        if ip is None:
            raise ReadinessError("not_ready", f"{container.name} has no address on its deployment "
                                 f"network to probe ({describe(readiness)})")
        with _reachable(client, network):
            while True:
                if kind == "tcp" and _try_tcp(waiter, ip, readiness["port"]):
                    break
                if kind == "http" and _try_http(waiter, ip, readiness):
                    break
                waiter.pause(TCP_INTERVAL_S if kind == "tcp" else HTTP_INTERVAL_S)
        return time.monotonic() - started
