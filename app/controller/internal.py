"""The active controller's internal endpoint: live data from agents for the web tier.

The web tier holds no agent links (ARCHITECTURE.md); for a deployment's logs (tail and follow),
metrics and health it opens a WebSocket to this endpoint, proves it belongs to this NullOps
installation (an HMAC of the session secret both processes share), and sends requests that
the controller relays over the node's link. Only read-only methods pass; followed log streams
end when the web side goes away. The web checks the user's permission before it asks.
"""
import asyncio
import hashlib
import hmac
import json
import logging

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from agent import protocol
from app.controller.links import LinkDown, RequestFailed

log = logging.getLogger("nullops.controller.internal")

RELAYED_METHODS = frozenset({protocol.LOGS_TAIL, protocol.LOGS_FOLLOW, protocol.LOGS_UNFOLLOW,
                             protocol.STATS_GET, protocol.RUN_GET, protocol.DEPLOYMENT_LIST})
AUTH_TIMEOUT_S = 5


def internal_token(session_secret):
    return hmac.new(session_secret.encode(), b"nullops-controller-internal/v1", hashlib.sha256).hexdigest()


def parse_address(address):
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class InternalEndpoint:
    def __init__(self, manager, address, session_secret):
        self.manager = manager
        self.host, self.port = parse_address(address)
        self._token = internal_token(session_secret)
        self.server = None

    async def start(self):
        self.server = await serve(self._serve, self.host, self.port, compression=None,
                                  max_size=protocol.MAX_FRAME_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("internal endpoint on %s:%s", self.host, self.port)

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    async def stop(self):
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, ws):
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S))
        except (TimeoutError, ValueError, ConnectionClosed):
            return
        if not (isinstance(first, dict) and isinstance(first.get("token"), str)
                and hmac.compare_digest(first["token"], self._token)):
            log.warning("refused an internal connection from %s: bad token", ws.remote_address)
            await ws.close(1008, "refused")
            return
        await ws.send(json.dumps({"type": "ready"}))
        streams = set()  # (node id, stream id) followed by this client
        try:
            async for raw in ws:
                asyncio.create_task(self._answer(ws, raw, streams))
        except ConnectionClosed:
            pass
        finally:
            for node_id, stream_id in streams:
                self.manager.unsubscribe(node_id, stream_id)
                link = self.manager.links.get(node_id)
                if link is not None and link.online:
                    asyncio.create_task(_quiet(link.call(protocol.LOGS_UNFOLLOW, {"stream_id": stream_id})))

    async def _answer(self, ws, raw, streams):
        try:
            request = json.loads(raw)
            request_id, node_id = request["id"], request["node_id"]
            method, params = request["method"], request.get("params") or {}
        except (ValueError, KeyError, TypeError):
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
        try:
            result = await link.call(method, params, timeout=60)
        except LinkDown as exc:
            await _send(ws, request_id, error=("node_offline", exc.reason))
            return
        except RequestFailed as exc:
            await _send(ws, request_id, error=(exc.code, exc.message))
            return
        if method == protocol.LOGS_FOLLOW:
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
