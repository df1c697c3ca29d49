"""One WSS link per enabled node, all in one asyncio loop (NOTES.md: thousands of links on two
cores this way; one thread per link does not scale).

Each link: TLS without a CA (agents have self-signed certificates) but with the certificate's
SHA-256 thumbprint pinned and checked before the first protocol frame; then the mutual token
proof (agent/protocol.py); then hello, the version check, the full desired state, and a
heartbeat every 4 s (offline 12 s after the last frame, to the moment). A link that fails is
retried forever with capped exponential backoff and jitter, until the node is disabled, revoked,
untrusted or deleted; a node that was online in the last minutes is retried every 2 s at most
(issue 14: back within seconds of a network heal).
"""
import asyncio
import itertools
import json
import logging
import random
import socket
import ssl
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, PayloadTooBig

from agent import protocol
from app import __version__
from app.controller import state

log = logging.getLogger("nullops.controller.links")

# Three missed heartbeats, as Docker Swarm, counted from the last frame: 12 s, so that a link
# cut silently (no FIN) has the node offline within 15 s of the cut (issue 14) also when a frame
# came a moment before it (with 15 s the chaos suite measured 15.0x s).
HEARTBEAT_S = 4.0
DEAD_AFTER_S = 12.0
OPEN_TIMEOUT_S = 10.0
# A close the peer does not answer: on a dead link the closing handshake would wait websockets'
# default 10 s before the node is marked offline (measured in tests/chaos/test_link_cut.py:
# a blackholed link went offline 29 s after the cut).
CLOSE_TIMEOUT_S = 2.0
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
# Most drops of a link that was up are short (a network blip, an agent restart): such a node is
# retried at least this often for RECENT_S, so that it is back within seconds of the heal, not
# after a backoff that grew during the outage to 30 s (issue 14 asks for 5 s). Nodes down longer,
# or never up, back off to BACKOFF_CAP_S as before. A fleet cut off at once retries faster for
# those minutes; refused connections cost little, and blackholed ones are bounded by
# HANDSHAKES_AT_ONCE and OPEN_TIMEOUT_S.
RECENT_S = 300.0
RECENT_CAP_S = 2.0
LAST_SEEN_EVERY_S = 30.0   # last_seen_at is written at most this often (liveness is in memory)
HANDSHAKES_AT_ONCE = 100   # concurrent TLS + proof handshakes (a mass reconnect stays smooth)


# A dead-link check that itself ran this late (a starved loop: 4,000 links on a host whose
# other processes took the CPU) looks again once after RECHECK_S before it ends the link.
LATE_S = 1.0
RECHECK_S = 1.0


def silent_until(now, wake_at, recheck_at):
    """None when a link without frames for DEAD_AFTER_S is dead now; else when to look again.
    A check that woke more than LATE_S after it was due may be seeing its own loop's lateness:
    the peer's frames can be waiting in the socket, unread. So it looks once more, RECHECK_S
    later, after the loop has read what came meanwhile. On time (a healthy loop) it is dead at
    once: a cut link still goes offline within 15 s (tests/chaos/test_link_cut.py)."""
    if recheck_at is None and now - wake_at > LATE_S:
        return now + RECHECK_S
    return None


async def close_link(ws):
    """ws.close(), bounded. The close waits for the transport's connection_lost; with 4,000
    links coming up on a busy host, uvloop's TLS transport sometimes hit "Fatal error on SSL
    protocol" on a socket already closed and never called it, so the close never returned: each
    such link held one of the HANDSHAKES_AT_ONCE permits for good, and 731 nodes were never
    dialled again (benchmarks/agent_fleet.py, issue 19). Past the close timeout the socket is
    dropped without a closing handshake."""
    try:
        await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S + 1.0)
    except TimeoutError:
        ws.transport.abort()
        log.info("a link's close did not finish within %.0f s: dropped", CLOSE_TIMEOUT_S + 1.0)


class LinkDown(Exception):
    """The link cannot go on; `reason` is for people (it becomes the node's status reason)."""

    def __init__(self, reason, status="offline"):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def client_ssl_context():
    """Encryption without CA verification: trust comes from the pinned thumbprint and the
    token proof, both checked before anything of value is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def describe_connect_error(exc, host, port):
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"the host name {host} does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {where}: is the agent running and the port right?"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer from {where} within {OPEN_TIMEOUT_S:.0f} s"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where} ({exc.reason or exc}): is this a NullOps agent's port?"
    if isinstance(exc, InvalidStatus):
        return (f"the server at {where} answered HTTP {exc.response.status_code}: "
                "it is not a NullOps agent")
    if isinstance(exc, InvalidHandshake):
        return f"the server at {where} is not a NullOps agent ({exc})"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


class NodeLink:
    def __init__(self, manager, target):
        self.manager = manager
        self.target = target
        self.node_id = target["id"]
        self.ws = None
        self.online = False
        self.thumbprint = None
        self._pending = {}
        self._ids = itertools.count(1)
        self._last_frame = 0.0
        self._last_seen_written = 0.0
        self._acked = 0
        self._stop = False
        self._went_online = False

    # --- lifecycle -------------------------------------------------------------------------
    async def run(self):
        failures = 0
        last_up = None   # when a session of this link was last online (monotonic)
        while not self._stop:
            started = time.monotonic()
            self._went_online = False
            try:
                await self._session()
                reason, status = "link closed", "offline"
            except LinkDown as exc:
                reason, status = exc.reason, exc.status
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one node's trouble never stops the others
                log.exception("link to node %s failed", self.target["name"])
                reason, status = f"internal error on the link: {type(exc).__name__}", "offline"
            finally:
                self._fail_pending()
                if self._went_online:
                    last_up = time.monotonic()
                self.online = False
                self.ws = None
            if self._stop:
                return
            if status == "untrusted":
                return  # waits for an admin; the manager starts a new link after approval
            await self.manager.db(state.mark, self.node_id, status, reason, self.manager.fence)
            self.manager.changed()
            # A link that lived a while starts the backoff over.
            failures = 0 if time.monotonic() - started > BACKOFF_CAP_S else failures + 1
            recent = last_up is not None and time.monotonic() - last_up < RECENT_S
            delay = min(RECENT_CAP_S if recent else BACKOFF_CAP_S,
                        BACKOFF_FIRST_S * 2 ** max(0, failures - 1))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def stop(self):
        self._stop = True
        if self.ws is not None:
            await close_link(self.ws)

    # --- one connection ----------------------------------------------------------------------
    async def _session(self):
        host, port = self.target["host"], self.target["port"]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        async with self.manager.handshakes:
            try:
                ws = await connect(f"wss://{netloc}{protocol.WEBSOCKET_PATH}",
                                   ssl=self.manager.ssl_context, open_timeout=OPEN_TIMEOUT_S,
                                   ping_interval=None, close_timeout=CLOSE_TIMEOUT_S,
                                   compression=None, proxy=None,
                                   max_size=protocol.MAX_FRAME_BYTES, user_agent_header=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every way of not connecting is a reason
                raise LinkDown(describe_connect_error(exc, host, port)) from None
            self.ws = ws
            try:
                hello = await self._handshake(ws)
            except ConnectionClosed:
                # The agent gave up waiting for a frame of ours (HANDSHAKE_TIMEOUT_S): a busy
                # controller's reason, not an internal error.
                await close_link(ws)
                raise LinkDown("the agent closed the connection during the handshake") from None
            except BaseException:
                await close_link(ws)
                raise
        self.online = self._went_online = True
        self._acked = 0   # sequence numbers are the agent's: a wiped agent starts again at 1
        self._last_frame = time.monotonic()
        await self.manager.mark_online(self.node_id, self.thumbprint, hello)
        self.target["thumbprint"] = self.thumbprint  # pinned now (at first contact) or already
        self._last_seen_written = time.monotonic()
        log.info("node %s online (agent %s)", self.target["name"], hello.get("agent_version"))
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._replayed()
            await self._sync()
            next_ping = time.monotonic() + HEARTBEAT_S
            recheck_at = None
            while True:
                # Wakes for the next ping and at the moment the link is dead, not at the next
                # heartbeat tick after it (which made it up to a heartbeat later).
                wake_at = min(next_ping, recheck_at or self._last_frame + DEAD_AFTER_S)
                done, _ = await asyncio.wait({reader}, timeout=max(0.0, wake_at - time.monotonic()))
                if done:
                    break
                now = time.monotonic()
                if now - self._last_frame < DEAD_AFTER_S:
                    recheck_at = None
                elif recheck_at is None or now >= recheck_at:
                    recheck_at = silent_until(now, wake_at, recheck_at)
                    if recheck_at is None:
                        ws.transport.abort()  # nobody answers: no closing handshake to wait for
                        raise LinkDown(f"no heartbeat answer for {DEAD_AFTER_S:.0f} s")
                if now >= next_ping:
                    next_ping = now + HEARTBEAT_S
                    self._ping(ws)
            reader.result()  # raises what ended the reader
        finally:
            reader.cancel()
            await close_link(ws)

    async def _handshake(self, ws):
        ssl_object = ws.transport.get_extra_info("ssl_object")
        self.thumbprint = protocol.thumbprint_of_der(ssl_object.getpeercert(binary_form=True))
        pinned = self.target["thumbprint"]
        if pinned is not None and pinned != self.thumbprint:
            # Checked before the first protocol frame: an impostor learns nothing.
            await self.manager.db(state.mark_untrusted, self.node_id, self.thumbprint)
            raise LinkDown("certificate changed", status="untrusted")
        client_nonce = protocol.new_nonce()
        await ws.send(protocol.encode({"type": protocol.AUTH_BEGIN, "protocol": protocol.PROTOCOL_VERSION,
                                       "client_nonce": client_nonce}))
        challenge = await self._expect(ws, protocol.AUTH_CHALLENGE)
        agent_nonce = challenge.get("agent_nonce")
        # The node's verifier, then, while a rotation has not reached the agent, the one before
        # it (a link drop cut the rotation short): that link pushes the rotation at once.
        verifier = next((v for v in (self.target["verifier"], self.target.get("previous_verifier"))
                         if v and protocol.check_agent_proof(v, client_nonce, agent_nonce, self.thumbprint,
                                                             challenge.get("proof"))), None)
        if verifier is None:
            await ws.send(protocol.encode({"type": protocol.AUTH_FAILED}))
            raise LinkDown("the agent could not prove it holds this node's token: the agent runs "
                           "with another token, or this is not our agent")
        await ws.send(protocol.encode({
            "type": protocol.AUTH_PROVE,
            "proof": protocol.client_proof(verifier, client_nonce, agent_nonce, self.thumbprint)}))
        hello = await self._expect(ws, protocol.HELLO)
        version = hello.get("agent_version")
        if hello.get("protocol") != protocol.PROTOCOL_VERSION or version != __version__:
            reason = (f"agent version {hello.get('agent_version')} (protocol {hello.get('protocol')}) "
                      f"differs from the control plane's {__version__} (protocol "
                      f"{protocol.PROTOCOL_VERSION}): upgrade the agent; it gets no work until then")
            await self.manager.db(state.mark_incompatible, self.node_id, reason, version)
            raise LinkDown(reason, status="incompatible")
        return hello

    async def _expect(self, ws, frame_type):
        try:
            raw = await asyncio.wait_for(ws.recv(), protocol.HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            raise LinkDown(f"the agent sent no {frame_type} within {protocol.HANDSHAKE_TIMEOUT_S} s") \
                from None
        except ConnectionClosed:
            raise LinkDown("the agent closed the connection during the handshake") from None
        try:
            frame = protocol.decode(raw)
        except protocol.ProtocolError as exc:
            raise LinkDown(f"the agent's handshake was malformed ({exc.message})") from None
        if frame["type"] == protocol.AUTH_FAILED:
            raise LinkDown("the agent refused our token proof: the agent is configured with another "
                           "token (rotate the token and configure the agent with the new one)")
        if frame["type"] != frame_type:
            raise LinkDown(f"expected {frame_type} from the agent, got {frame['type'][:40]!r}")
        return frame

    # --- frames ------------------------------------------------------------------------------
    async def _read(self, ws):
        try:
            await self._read_frames(ws)
        finally:
            # Calls waiting for an answer (the first state.sync, a rotation) fail now rather
            # than at their own timeouts: nothing will answer them on this link.
            self.online = False
            self._fail_pending()

    async def _read_frames(self, ws):
        try:
            async for raw in ws:
                self._last_frame = time.monotonic()
                try:
                    frame = protocol.decode(raw)
                except protocol.ProtocolError as exc:
                    raise LinkDown(f"the agent sent a malformed frame ({exc.message})") from None
                await self._on_frame(frame)
        except PayloadTooBig:
            raise LinkDown("the agent sent a frame over the size limit") from None
        except ConnectionClosed as exc:
            said = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else "closed"
            raise LinkDown(f"link lost ({said})") from None

    async def _on_frame(self, frame):
        kind = frame["type"]
        if kind == protocol.RESPONSE:
            future = self._pending.pop(frame.get("id"), None)
            if future is not None and not future.done():
                future.set_result(frame)
        elif kind == protocol.EVENT:
            await self.manager.on_event(self, frame)
            seq = frame.get("seq")
            if isinstance(seq, int) and seq > self._acked:
                self._acked = seq
                asyncio.create_task(self._ack(seq))
        elif kind == protocol.RESOURCES:
            # Written with other nodes' frames within a second; the reader does not wait for it.
            self.manager.note_resources(self.node_id, frame)
            self._last_seen_written = time.monotonic()
        elif kind == protocol.STREAM:
            self.manager.on_stream(self, frame)
        else:
            log.info("node %s sent an unknown frame type %r", self.target["name"], kind[:40])
        if time.monotonic() - self._last_seen_written > LAST_SEEN_EVERY_S:
            self._last_seen_written = time.monotonic()
            await self.manager.db(state.touch, self.node_id)

    async def call(self, method, params=None, timeout=30.0):
        """Send a request and wait for its response; raises LinkDown or RequestFailed."""
        if self.ws is None or not self.online:
            raise LinkDown("the node is not online")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.ws.send(protocol.encode(protocol.request(request_id, method, params)))
            response = await asyncio.wait_for(future, timeout)
        except ConnectionClosed:
            raise LinkDown("link lost") from None
        except TimeoutError:
            raise LinkDown(f"no answer to {method} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(request_id, None)
        if not response.get("ok"):
            error = response.get("error") or {}
            raise RequestFailed(error.get("code", "error"), error.get("message", "failed"))
        return response.get("result") or {}

    def _fail_pending(self):
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkDown("link lost"))
        self._pending.clear()

    def _ping(self, ws):
        """A heartbeat: a ping request whose answer nobody waits for (the reader counts every
        frame; no frame for DEAD_AFTER_S ends the link). Hot path: 4,000 links send 1,000 a
        second (issue 19), so no pending call, future or timeout per ping. Written only while
        the socket takes it at once: a peer that stopped reading gets no more, and its silence
        ends the link."""
        if ws.transport.get_write_buffer_size() > 0:
            return
        frame = protocol.encode(protocol.request(next(self._ids), protocol.PING))
        asyncio.get_running_loop().create_task(ws.send(frame)).add_done_callback(_ignore_outcome)

    async def _ack(self, seq):
        try:
            await self.call(protocol.EVENTS_ACK, {"seq": seq})
        except (LinkDown, RequestFailed):
            pass  # not acknowledged: the agent replays it on the next link

    async def _replayed(self):
        """Returns once the events the agent kept while the link was down are stored. The agent
        sends them right after hello, before it reads any request, and the reader stores each
        event before it reads the next frame: so the answer to a ping comes after all of them.
        The desired state must be read after them: an agent killed during a run reports it
        rolled back (failed), and a desired state read before that still held the deployment as
        offline, so the agent ran it again while the database said failed: its containers ran
        for a deployment the database had as rolled back (tests/chaos/test_agent_kill.py)."""
        try:
            await self.call(protocol.PING, timeout=DEAD_AFTER_S)
        except RequestFailed:
            pass  # answered: what came before it was stored all the same

    async def _sync(self):
        desired = await self.manager.desired_state(self.node_id)
        # In parts that fit a frame (a node's specs together may not): the last names every one
        # to keep, and only then does the agent remove the others.
        keep = desired["keep"]
        sections = list(protocol.parts(desired["deployments"], protocol.FRAME_BUDGET_BYTES)) or [[]]
        result = {"applied": [], "kept": [], "degraded": [], "deleted": [], "errors": {}}
        for number, section in enumerate(sections, 1):
            params = {"deployments": section}
            if number == len(sections):
                params["keep"] = keep
            try:
                answer = await self.call(protocol.STATE_SYNC, params, timeout=120)
            except RequestFailed as exc:  # the link stays; the next connect syncs again
                log.warning("node %s refused the desired state: %s", self.target["name"], exc.message)
                return
            for key in ("applied", "kept", "degraded", "deleted"):
                result[key] += answer.get(key) or []
            result["errors"].update(answer.get("errors") or {})
        if result.get("errors"):
            log.warning("node %s refused part of the desired state: %s", self.target["name"],
                        json.dumps(result["errors"])[:500])
        await self.manager.on_sync(self, result)


def _ignore_outcome(task):
    if not task.cancelled():
        task.exception()  # a link closing meanwhile: the reader reports it


class RequestFailed(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message
