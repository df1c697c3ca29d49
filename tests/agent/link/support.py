"""What the link tests share: a recording service, the control plane's side of the handshake,
and the agent as a real process (`python -m tests.agent.link.support` runs `agent.__main__.main`
with the recording service instead of the Docker one)."""
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from websockets.sync.client import connect as ws_connect

from agent import protocol

try:
    from agent.errors import AgentError
except ImportError:  # written by another engineer; the link only needs .code and .message
    class AgentError(Exception):
        def __init__(self, code, message):
            super().__init__(message)
            self.code, self.message = code, message

REPO = Path(__file__).resolve().parents[3]
TOKEN = "test-node-token-7f3a9c1e5b2d4f6a8c0e"
OTHER_TOKEN = "another-node-token-0b1c2d3e4f5a6b7c"
WAIT = 5


class RecordingService:
    """Stands in for agent.service.AgentService: records calls, answers a few methods in
    ways the link must handle (results, typed errors, crashes, a slow call)."""

    def __init__(self):
        self.calls = []
        self.release = threading.Event()   # lets the slow call (stats.get) finish
        self.started = self.stopped = False
        self.link_peers = []   # link_up(peer): the ingress's default source (agent/netguard.py)

    def link_up(self, peer):
        self.link_peers.append(peer)

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True
        self.release.set()

    def handle(self, method, params):
        self.calls.append((method, params))
        if method == protocol.DEPLOYMENT_LIST:
            if "answer_bytes" in params:  # an answer of that size, for the frame limit
                return {"deployments": [], "pad": "x" * params["answer_bytes"]}
            return {"deployments": [], "echo": params}
        if method in (protocol.STATS_GET, protocol.STATE_SYNC):
            self.release.wait(30)  # slow calls the link must not wait on forever
            return {"slow": "done"}
        if method == protocol.RUN_GET:
            raise protocol.ProtocolError(f"run {params.get('run_id')!r} is unknown", protocol.NOT_FOUND)
        if method == protocol.LOGS_TAIL:
            raise AgentError("engine_unavailable", "Docker engine unreachable while reading logs")
        if method == protocol.PLUGINS_PREPULL:
            password = params["images"][0]["auth"]["password"]
            raise RuntimeError(f"pull exploded while using {password}")
        if method == protocol.DEPLOYMENT_APPLY:
            return {"run_id": "run-1", "status": "running"}
        raise protocol.ProtocolError(f"unknown method {method!r}", protocol.UNKNOWN_METHOD)


# --- the control plane's side ---------------------------------------------------------------------
class ImpostorAgent(Exception):
    """The agent's proof did not check out: it does not hold this node's token."""


def client_context():
    """Trusts no CA: the test pins the certificate's thumbprint instead, as the control plane does."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(port, path=protocol.WEBSOCKET_PATH, **kwargs):
    return ws_connect(f"wss://127.0.0.1:{port}{path}", ssl=client_context(), compression=None,
                      open_timeout=WAIT, close_timeout=2, legacy=True, **kwargs)


def peer_thumbprint(ws):
    return protocol.thumbprint_of_der(ws.socket.getpeercert(binary_form=True))


def recv(ws, timeout=WAIT):
    return json.loads(ws.recv(timeout=timeout))


def send(ws, frame):
    ws.send(json.dumps(frame))


def handshake(ws, token, pinned=None, check_agent=True, version=protocol.PROTOCOL_VERSION):
    """auth.begin -> auth.challenge -> auth.prove; returns the frame that follows the proof
    (hello, or auth.failed). With check_agent, an agent whose proof fails raises ImpostorAgent
    and never gets this side's proof."""
    thumbprint = peer_thumbprint(ws)
    if pinned is not None:
        assert thumbprint == pinned, "the agent's certificate is not the pinned one"
    client_nonce = protocol.new_nonce()
    send(ws, {"type": protocol.AUTH_BEGIN, "protocol": version, "client_nonce": client_nonce})
    challenge = recv(ws)
    if challenge["type"] != protocol.AUTH_CHALLENGE:
        return challenge
    verifier = protocol.verifier_for(token)
    if check_agent and not protocol.check_agent_proof(verifier, client_nonce, challenge["agent_nonce"],
                                                      thumbprint, challenge["proof"]):
        send(ws, {"type": protocol.AUTH_FAILED})
        ws.close()
        raise ImpostorAgent()
    proof = protocol.client_proof(verifier, client_nonce, challenge["agent_nonce"], thumbprint)
    send(ws, {"type": protocol.AUTH_PROVE, "proof": proof})
    return recv(ws)


def open_link(port, token=TOKEN, pinned=None):
    """A connected, authenticated link; returns (ws, hello)."""
    ws = connect(port)
    hello = handshake(ws, token, pinned)
    assert hello["type"] == protocol.HELLO, hello
    return ws, hello


def call(ws, request_id, method, params=None, timeout=WAIT):
    """Send a request; return its response, collecting any events that arrive first."""
    send(ws, protocol.request(request_id, method, params))
    deadline = time.monotonic() + timeout
    while True:
        frame = recv(ws, max(0.01, deadline - time.monotonic()))
        if frame["type"] == protocol.RESPONSE and frame["id"] == request_id:
            return frame


# --- the agent as a process -----------------------------------------------------------------------
LISTENING = re.compile(r"listening on https://[^:]+:(\d+)")
THUMBPRINT = re.compile(r"certificate thumbprint sha256: ([0-9a-f]{64})")


class AgentProcess:
    """`python -m tests.agent.link.support ARGS` with its stderr collected line by line."""

    def __init__(self, data_dir, token=TOKEN, real=False, args=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        if token is not None:
            env["AGENT_TOKEN"] = token
        module = "agent" if real else "tests.agent.link.support"
        # The real agent's isolation rules stay on the host after it stops: tests that want them
        # turn them on with a pool of their own and remove them (tests/e2e/conftest.py).
        isolation = ("--network-isolation", "off") if real else ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--data-dir", str(data_dir), "--host", "127.0.0.1",
             "--port", "0", *isolation, *args],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self):
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=15):
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = pattern.search("\n".join(self.lines))
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    log = "\n".join(self.lines)
                    raise AssertionError(f"agent never logged {pattern.pattern!r}; log:\n{log}")
                self._changed.wait(min(left, 0.2))

    @property
    def port(self):
        return int(self.wait_for(LISTENING).group(1))

    @property
    def thumbprint(self):
        return self.wait_for(THUMBPRINT).group(1)

    def stop(self, timeout=10):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(2)


def _main():
    from agent.__main__ import main

    return main(sys.argv[1:], service_factory=lambda settings, store, hub: RecordingService())


if __name__ == "__main__":
    sys.exit(_main())
