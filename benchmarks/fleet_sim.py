"""A simulated fleet: ONE process serving N agent endpoints on 127.0.0.1 that speak the real
agent protocol (agent/protocol.py, docs/protocol.md), for benchmarks/agent_fleet.py.

Each endpoint is its own TLS WebSocket server on its own loopback port, all in one asyncio event
loop, with one shared self-signed certificate made by `agent.tls` and one shared token. Like the
real agent, an endpoint

- refuses any path but `/ws`;
- runs the mutual token proof: auth.begin -> auth.challenge (with `agent_proof`) -> auth.prove
  (checked against `client_proof`), each frame within HANDSHAKE_TIMEOUT_S, else `auth.failed`
  and close 1008;
- says hello (agent_version = agent.__version__, protocol, node_id, capacity, thumbprint);
- keeps one link at a time: a newly authenticated link replaces the current one (close 1001
  "replaced");
- sends a `resources` frame right after hello and then every `--resources-interval` seconds;
- answers requests: ping, state.sync (every deployment sent is reported kept, as by an agent
  whose deployments all run), events.ack, plugins.prepull
  (reports every image pulled without pulling), token.rotate (the new verifier is effective at
  once for that endpoint), deployment.list (empty); anything else is refused.

Run from the repository root:

    .venv/bin/python -m benchmarks.fleet_sim --count 100 --token TOKEN

It prints one JSON line when every endpoint listens: {"ports": [...], "thumbprint": ...}. Then
it reads commands from stdin, one per line, and answers each with one JSON line on stdout:

    stats   -> {"links", "fresh", "handshakes", "authenticated", "refused", "closed",
                "methods": {...}, "synced", "prepulled", "since"}
    reset   -> zero the per-round figures (fresh, handshakes, methods, synced, prepulled);
               answers stats
    quit    -> close every endpoint and exit (so does the end of stdin)

`links` is the number of endpoints holding an authenticated link now, `fresh` those among them
whose link authenticated since the last reset, `handshakes` the successful handshakes since
then; `synced` and `prepulled` count endpoints that got at least one state.sync /
plugins.prepull since the last reset.
Traffic is loopback only.
"""
import argparse
import asyncio
import collections
import json
import logging
import os
import resource
import sys
import tempfile
import time
from http import HTTPStatus

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from agent import __version__ as AGENT_VERSION
from agent import protocol
from agent.store import utc_now
from agent.tls import ensure_certificate, server_context, thumbprint
from app.controller import runtime

log = logging.getLogger("fleet_sim")

CAPACITY = {"cpus": 2, "memory_bytes": 4 * 1024 ** 3}


class Refused(Exception):
    pass


class Fleet:
    def __init__(self, count, verifier, thumb, resources_interval):
        self.count = count
        self.thumbprint = thumb
        self.resources_interval = resources_interval
        self.verifiers = [verifier] * count       # per endpoint: token.rotate changes one
        self.current = [None] * count             # per endpoint: the authenticated link
        self.linked_at = [0.0] * count            # per endpoint: when that link authenticated
        self.authenticated = 0                    # totals since start
        self.refused = 0
        self.closed = 0
        self.reset()

    def reset(self):
        self.methods = collections.Counter()
        self.handshakes = 0
        self.closes = collections.Counter()
        self.synced = set()
        self.prepulled = set()
        self.since = time.time()

    def stats(self):
        return {"links": sum(1 for ws in self.current if ws is not None),
                "fresh": sum(1 for ws, at in zip(self.current, self.linked_at, strict=True)
                             if ws is not None and at >= self.since),
                "handshakes": self.handshakes,
                "authenticated": self.authenticated, "refused": self.refused, "closed": self.closed,
                "methods": dict(self.methods), "closes": dict(self.closes), "synced": len(self.synced),
                "prepulled": len(self.prepulled), "since": self.since}

    # --- one connection ------------------------------------------------------------------------
    async def serve_link(self, index, ws):
        try:
            await self._handshake(index, ws)
        except Refused:
            self.refused += 1
            try:
                await ws.send(protocol.encode({"type": protocol.AUTH_FAILED}))
                await ws.close(protocol.CLOSE_POLICY_VIOLATION)
            except ConnectionClosed:
                pass
            return
        except ConnectionClosed:
            return
        self.authenticated += 1
        self.handshakes += 1
        self.linked_at[index] = time.time()
        old, self.current[index] = self.current[index], ws
        if old is not None:
            asyncio.create_task(old.close(protocol.CLOSE_GOING_AWAY, protocol.CLOSE_REASON_REPLACED))
        resources = None
        try:
            await ws.send(protocol.encode({
                "type": protocol.HELLO, "agent_version": AGENT_VERSION,
                "protocol": protocol.PROTOCOL_VERSION, "node_id": f"sim-{index}",
                "capacity": CAPACITY, "thumbprint": self.thumbprint}))
            if self.resources_interval > 0:
                resources = asyncio.create_task(self._resources(ws))
            async for raw in ws:
                await ws.send(protocol.encode(self._answer(index, raw)))
        except ConnectionClosed:
            pass
        finally:
            self.closes[_close_reason(ws)] += 1
            if resources is not None:
                resources.cancel()
            if self.current[index] is ws:
                self.current[index] = None
            self.closed += 1

    async def _expect(self, ws, frame_type):
        try:
            raw = await asyncio.wait_for(ws.recv(), protocol.HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            raise Refused(f"no {frame_type}") from None
        try:
            frame = protocol.decode(raw)
        except protocol.ProtocolError:
            raise Refused(f"malformed {frame_type}") from None
        if frame["type"] != frame_type:
            raise Refused(f"expected {frame_type}")
        return frame

    async def _handshake(self, index, ws):
        begin = await self._expect(ws, protocol.AUTH_BEGIN)
        client_nonce = begin.get("client_nonce")
        if begin.get("protocol") != protocol.PROTOCOL_VERSION or not protocol.valid_nonce(client_nonce):
            raise Refused("protocol or nonce")
        verifier = self.verifiers[index]
        agent_nonce = protocol.new_nonce()
        await ws.send(protocol.encode({
            "type": protocol.AUTH_CHALLENGE, "agent_nonce": agent_nonce,
            "proof": protocol.agent_proof(verifier, client_nonce, agent_nonce, self.thumbprint)}))
        prove = await self._expect(ws, protocol.AUTH_PROVE)
        expected = protocol.client_proof(verifier, client_nonce, agent_nonce, self.thumbprint)
        if not protocol.proofs_match(expected, prove.get("proof")):
            raise Refused("bad token proof")

    async def _resources(self, ws):
        while True:
            await ws.send(protocol.encode({
                "type": protocol.RESOURCES, "at": utc_now(),
                "host": {"cpus": CAPACITY["cpus"], "cpu_percent": 3.0,
                         "memory_total": CAPACITY["memory_bytes"],
                         "memory_available": CAPACITY["memory_bytes"] // 2},
                "allocated": {"cpus": 0.0, "memory_mb": 0}}))
            await asyncio.sleep(self.resources_interval)

    def _answer(self, index, raw):
        try:
            request_id, method, params = protocol.parse_request(protocol.decode(raw))
        except protocol.ProtocolError as exc:
            return protocol.error(None, exc.code, exc.message)
        self.methods[method] += 1
        if method == protocol.PING or method == protocol.EVENTS_ACK:
            return protocol.ok(request_id)
        if method == protocol.STATE_SYNC:
            # As an agent whose deployments all run: each one sent is kept. The last part of a
            # sync is the one that names what to keep: the endpoint is synced then.
            if "keep" in params:
                self.synced.add(index)
            kept = [entry.get("deployment", {}).get("deployment_id")
                    for entry in params.get("deployments") or [] if isinstance(entry, dict)]
            return protocol.ok(request_id, {"applied": [], "kept": kept, "deleted": [], "errors": {}})
        if method == protocol.PLUGINS_PREPULL:
            self.prepulled.add(index)
            images = [item.get("image") for item in params.get("images") or [] if isinstance(item, dict)]
            return protocol.ok(request_id, {"pulled": images, "failed": {}})
        if method == protocol.TOKEN_ROTATE:
            if not protocol.valid_verifier(params.get("verifier")):
                return protocol.error(request_id, protocol.BAD_REQUEST, "verifier must be 64 hex digits")
            self.verifiers[index] = params["verifier"]
            return protocol.ok(request_id)
        if method == protocol.DEPLOYMENT_LIST:
            return protocol.ok(request_id, {"deployments": []})
        return protocol.error(request_id, protocol.REFUSED, f"{method} is not simulated")


def _close_reason(ws):
    """Who closed an authenticated link and why, for the stats."""
    if ws.protocol.close_sent is not None and ws.protocol.close_sent.reason == protocol.CLOSE_REASON_REPLACED:
        return "replaced by a newer link"
    if ws.protocol.close_rcvd is not None:
        return f"controller closed {ws.protocol.close_rcvd.code} {ws.protocol.close_rcvd.reason}".strip()
    return "connection lost"


def _not_ws(connection, request):
    if request.path != protocol.WEBSOCKET_PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None


async def _commands(fleet):
    """stdin commands -> one JSON line each on stdout; the end of stdin ends the simulator."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            return
        if line == "reset":
            fleet.reset()
        print(json.dumps(fleet.stats()), flush=True)


async def main_async(args):
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        cert_path, key_path, cert_pem = ensure_certificate(tmp, hostname="localhost")
        context = server_context(cert_path, key_path)
        thumb = thumbprint(cert_pem)
        fleet = Fleet(args.count, protocol.verifier_for(args.token), thumb, args.resources_interval)
        servers = []
        try:
            for index in range(args.count):
                servers.append(await serve(
                    lambda ws, index=index: fleet.serve_link(index, ws), "127.0.0.1", 0, ssl=context,
                    compression=None, ping_interval=None, process_request=_not_ws,
                    max_size=protocol.MAX_FRAME_BYTES, server_header=None, backlog=256))
            ports = [server.sockets[0].getsockname()[1] for server in servers]
            print(json.dumps({"ports": ports, "thumbprint": thumb, "pid": os.getpid()}), flush=True)
            await _commands(fleet)
        finally:
            for server in servers:
                server.close(close_connections=False)
            for ws in fleet.current:
                if ws is not None:
                    ws.transport.abort()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="number of agent endpoints")
    parser.add_argument("--token", required=True, help="the node token every endpoint holds")
    parser.add_argument("--resources-interval", type=float, default=protocol.RESOURCES_INTERVAL_S,
                        help="seconds between resources frames, 0 for none (default: as the agent)")
    parser.add_argument("--event-loop", choices=runtime.EVENT_LOOPS, default="auto")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # The simulator's own loop, apart from the controller's: uvloop where installed, so that the
    # fleet's side takes less of the machine the controller is measured on.
    runtime.run(main_async(args), args.event_loop)


if __name__ == "__main__":
    main()
