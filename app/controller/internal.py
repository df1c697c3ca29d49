"""The active controller's internal endpoint: live data from agents for the web tier.

The web tier holds no agent links (ARCHITECTURE.md); for a deployment's logs (tail and follow),
metrics and health it opens a WebSocket to this endpoint and sends requests that the controller
relays over the node's link. Only read-only methods pass; followed log streams end when the web
side goes away. The web checks the user's permission before it asks.

Both sides prove themselves, as the agent link does (issue #14.8: this was plain ws:// with a
token that never changed, so anyone who saw one connection could replay it, and at a fixed
address that a failover did not follow). The endpoint serves TLS with a certificate made when
the controller becomes the active one; it writes its address and the certificate's thumbprint
to the database (ControllerEndpoint), where web processes read and pin them. The web then
answers a fresh nonce with an HMAC keyed by the session secret both processes share.

Every followed log of every web process passes through here, so this is where the caps on them
hold (StreamLimits): per user and in all, whatever the number of web processes.
"""
import asyncio
import collections
import hashlib
import hmac
import json
import logging
import secrets
import socket
import ssl
import tempfile
from pathlib import Path

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from agent import protocol, tls
from app.controller.links import LinkDown, RequestFailed

log = logging.getLogger("nullops.controller.internal")

RELAYED_METHODS = frozenset({protocol.LOGS_TAIL, protocol.LOGS_FOLLOW, protocol.LOGS_UNFOLLOW,
                             protocol.STATS_GET, protocol.RUN_GET, protocol.DEPLOYMENT_LIST})
AUTH_TIMEOUT_S = 5


def internal_token(session_secret):
    """The key of the proofs: both processes derive it from the session secret."""
    return hmac.new(session_secret.encode(), b"nullops-controller-internal/v1", hashlib.sha256).hexdigest()


def internal_proof(token, nonce):
    """The web's answer to the endpoint's challenge: bound to this nonce, useless for another."""
    return hmac.new(bytes.fromhex(token), f"nullops-internal-proof/v1|{nonce}".encode(),
                    hashlib.sha256).hexdigest()


def server_tls(hostname):
    """(an SSL context with a new self-signed certificate, its thumbprint): made in memory for
    one term as the active controller; the key touches the disk only in a private temporary
    directory while the context loads it."""
    cert_pem, key_pem = tls.generate(hostname, role="controller")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="nullops-internal-") as private:
        cert_path, key_path = Path(private) / "cert.pem", Path(private) / "key.pem"
        tls.write_private(cert_path, cert_pem)
        tls.write_private(key_path, key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx, tls.thumbprint(cert_pem)


def advertised_address(bind_host, port, advertise=None):
    """How web processes reach this endpoint: NULLOPS_CONTROLLER_INTERNAL_ADVERTISE when set,
    else the address it listens on (this host's name for a wildcard one), with the real port."""
    if advertise:
        return advertise
    host = socket.gethostname() if bind_host in ("0.0.0.0", "::", "") else bind_host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address):
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class StreamLimits:
    """How many followed logs are admitted at once, per user and in all (issue #14.4). Each one
    holds a log reader (two threads) on its node, a socket here and two in a web process; a
    web process no longer spends a thread on one, so nothing else bounds them. Only the event
    loop touches this: a check and its count happen with no await between them."""

    def __init__(self, per_user, in_all):
        self.per_user, self.in_all = per_user, in_all
        self.open = 0
        self.by_viewer = collections.Counter()

    def admit(self, viewer):
        """None when admitted (and counted), else the refusal to show the viewer."""
        if viewer is not None and self.by_viewer[viewer] >= self.per_user:
            return (f"you follow {self.per_user} logs already, the most per user: stop following "
                    "one (in another tab or window?) and try again")
        if self.open >= self.in_all:
            log.warning("refused a log stream: %s are open, NULLOPS_LOG_STREAMS_MAX", self.open)
            return (f"{self.in_all} logs are followed in all right now, the most this NullOps "
                    "serves at once: try again when one stops")
        self.open += 1
        if viewer is not None:
            self.by_viewer[viewer] += 1
        return None

    def release(self, viewer):
        self.open -= 1
        if viewer is not None:
            self.by_viewer[viewer] -= 1
            if not self.by_viewer[viewer]:
                del self.by_viewer[viewer]


class InternalEndpoint:
    def __init__(self, manager, address, session_secret, limits, advertise=None):
        self.manager = manager
        self.host, self.port = parse_address(address)
        self._token = internal_token(session_secret)
        self.limits = limits
        self._advertise = advertise
        self.server = None
        self.thumbprint = None

    async def start(self):
        ctx, self.thumbprint = server_tls(socket.gethostname())
        self.server = await serve(self._serve, self.host, self.port, compression=None, ssl=ctx,
                                  max_size=protocol.MAX_FRAME_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("internal endpoint on %s:%s (certificate sha256 %s)", self.host, self.port,
                 self.thumbprint)

    @property
    def address(self):
        """Where web processes reach it (ControllerEndpoint.address)."""
        return advertised_address(self.host, self.port, self._advertise)

    async def stop(self):
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, ws):
        nonce = secrets.token_hex(32)
        try:
            await ws.send(json.dumps({"type": "challenge", "nonce": nonce}))
            first = json.loads(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S))
        except (TimeoutError, ValueError, ConnectionClosed):
            return
        if not (isinstance(first, dict) and isinstance(first.get("proof"), str)
                and hmac.compare_digest(first["proof"], internal_proof(self._token, nonce))):
            log.warning("refused an internal connection from %s: bad proof", ws.remote_address)
            await ws.close(1008, "refused")
            return
        await ws.send(json.dumps({"type": "ready"}))
        streams = set()  # (node id, stream id) followed by this client
        viewers = []     # whose followed logs this client holds places for in self.limits
        try:
            async for raw in ws:
                asyncio.create_task(self._answer(ws, raw, streams, viewers))
        except ConnectionClosed:
            pass
        finally:
            for node_id, stream_id in streams:
                self.manager.unsubscribe(node_id, stream_id)
                link = self.manager.links.get(node_id)
                if link is not None and link.online:
                    asyncio.create_task(_quiet(link.call(protocol.LOGS_UNFOLLOW, {"stream_id": stream_id})))
            # Requests still in flight give theirs back themselves (they hold them in `viewers`
            # only once the node has answered).
            for viewer in viewers:
                self.limits.release(viewer)

    async def _answer(self, ws, raw, streams, viewers):
        try:
            request = json.loads(raw)
            request_id, node_id = request["id"], request["node_id"]
            method, params = request["method"], request.get("params") or {}
            viewer = request.get("viewer")  # the user a followed log is for (web tier's word)
        except (ValueError, KeyError, TypeError, AttributeError):
            await ws.send(json.dumps({"type": "response", "id": None, "ok": False,
                                      "error": {"code": "bad_request", "message": "malformed request"}}))
            return
        if method not in RELAYED_METHODS:
            await _send(ws, request_id, error=("bad_request", f"{method!r} is not relayed"))
            return
        link = self.manager.links.get(node_id)
        if link is None or not link.online:
            await _send(ws, request_id, error=("node_offline", "the node is not online"))
            return
        following = method == protocol.LOGS_FOLLOW
        if following and (refusal := self.limits.admit(viewer)) is not None:
            await _send(ws, request_id, error=("too_many_streams", refusal))
            return
        try:
            result = await link.call(method, params, timeout=60)
        except (LinkDown, RequestFailed) as exc:
            if following:
                self.limits.release(viewer)
            if isinstance(exc, LinkDown):
                await _send(ws, request_id, error=("node_offline", exc.reason))
            else:
                await _send(ws, request_id, error=(exc.code, exc.message))
            return
        if following:
            if ws.state is State.CLOSED:  # gone while the node answered: _serve cleaned up already
                self.limits.release(viewer)
                await _quiet(link.call(protocol.LOGS_UNFOLLOW, {"stream_id": result["stream_id"]}))
                return
            viewers.append(viewer)
            stream_id = result["stream_id"]
            streams.add((node_id, stream_id))
            self.manager.subscribe(node_id, stream_id, lambda frame: _forward(ws, frame))
        await _send(ws, request_id, result=result)


async def _send(ws, request_id, result=None, error=None):
    frame = {"type": "response", "id": request_id, "ok": error is None}
    if error is None:
        frame["result"] = result
    else:
        frame["error"] = {"code": error[0], "message": error[1]}
    try:
        await ws.send(json.dumps(frame))
    except ConnectionClosed:
        pass


def _forward(ws, frame):
    async def send():
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            pass

    asyncio.get_running_loop().create_task(send())


async def _quiet(coroutine):
    try:
        await coroutine
    except (LinkDown, RequestFailed):
        pass
