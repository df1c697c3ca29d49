"""The agent's TLS endpoint: `GET /healthz` and the control plane's WebSocket link.

A link is, in order (docs/protocol.md has the frames):
1. the handshake: auth.begin -> auth.challenge -> auth.prove, each frame within
   HANDSHAKE_TIMEOUT_S; anything else is refused with `auth.failed` and close 1008, and nothing
   else happens before it succeeds (no request is read, no event is sent);
2. `hello`, then the replay of every unacknowledged event of the outbox, in seq order;
3. requests answered by id (in a small pool of threads, so a long call never blocks the link)
   while new events are pushed as they are published.

One link at a time: a newly authenticated link replaces the current one (close 1001
"replaced"). The control plane fails over by connecting from another controller, and the old
link may be half-open (its controller died): waiting for that socket to time out would keep the
node unreachable for minutes. Replacement happens only after the new peer proved the token.
"""
import logging
import queue
import re
import socket
import ssl
import threading
import traceback

import psutil
from flask import Flask, jsonify, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.serving import WSGIRequestHandler, make_server

from agent import __version__, protocol
from agent.redaction import redact
from agent.store import EventHub, utc_now

__all__ = ["AgentServer", "EventHub", "ServerError", "create_agent_app"]

log = logging.getLogger("nullops.agent.server")

HTTP_TIMEOUT_S = 10          # TLS handshake and HTTP request of a new connection
# Connections open at once on the agent port (issue 17 item 6). The control plane needs one link
# (two while a new one replaces the old) and a health check now and then; without a cap, anyone
# who reaches the port could open connections until the agent runs out of threads or memory
# (each waits up to HTTP_TIMEOUT_S in its TLS handshake). Past the cap a connection is closed
# at once, before its handshake.
MAX_CONNECTIONS = 32
REQUEST_WORKERS = 4          # requests handled at once on the link
EVENT_BATCH = 500
CLOSE_WAIT_S = 2             # for a closing peer's reply before the socket is dropped
INLINE_METHODS = frozenset({protocol.PING, protocol.EVENTS_ACK, protocol.TOKEN_ROTATE})
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
GENERIC_ERROR = "internal error; see the agent log"
# Where request params carry secret values (deployment.apply, state.sync, plugins.prepull):
# every string under "secrets", and strings under the credential keys (registry auth). They are
# redacted from logged tracebacks.
SECRET_TREES = frozenset({"secrets"})
SECRET_KEYS = frozenset({"password", "token", "identitytoken", "registrytoken", "auth_token"})


class ServerError(Exception):
    """The endpoint cannot start (address in use, ...)."""


class _Refused(Exception):
    """A handshake that fails; the message goes to the agent's log only."""


# --- request workers ------------------------------------------------------------------------------
class _Workers:
    """A fixed set of daemon threads: a request stuck in the engine must not keep the process
    alive at shutdown (ThreadPoolExecutor joins its threads at exit)."""

    def __init__(self, count):
        self._queue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"agent-request-{i}", daemon=True)
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, *args):
        self._queue.put((fn, args))

    def _run(self):
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a worker must survive any request
                log.exception("a request worker failed")

    def stop(self, timeout=5):
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)


# --- one link -------------------------------------------------------------------------------------
class Link:
    def __init__(self, ws, peer):
        self.ws = ws
        self.peer = peer
        self.closed = threading.Event()
        # Every event up to this seq was sent on this link or acknowledged before it: acks never
        # go past it, and the sender waits for events after it.
        self.last_sent = 0
        self._send_lock = threading.Lock()

    def send(self, frame):
        """Send one frame; False when the link is gone. Raises TypeError/ValueError for a frame
        that is not JSON. A frame the control plane would refuse as too large (closing the link)
        goes out cut instead, or for an answer, as an error."""
        text = protocol.encode(frame)
        if len(text) > protocol.MAX_FRAME_BYTES:
            text = protocol.encode(_within_limit(frame, len(text)))
        with self._send_lock:
            if self.closed.is_set():
                return False
            try:
                self.ws.send(text)
                return True
            except (ConnectionClosed, OSError):
                self.closed.set()
                return False

    def close(self, code, reason):
        """Send the close frame (unless the link is closed already) and mark the link closed."""
        # A sender blocked on a peer that stopped reading holds the lock: then drop the socket.
        if self._send_lock.acquire(timeout=CLOSE_WAIT_S):
            try:
                if self.ws.connected:
                    self.ws.close(code, reason)
            except (ConnectionClosed, OSError):
                pass
            finally:
                self.closed.set()
                self._send_lock.release()
        else:
            self.closed.set()
            self.drop()

    def drop(self):
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- the links of this agent ------------------------------------------------------------------------
class AgentLinks:
    def __init__(self, settings, service, store, credentials, thumbprint, hub):
        self.settings = settings
        self.service = service
        self.store = store
        self.credentials = credentials
        self.thumbprint = thumbprint.lower()
        self.hub = hub
        self.workers = _Workers(REQUEST_WORKERS)
        self._lock = threading.Lock()
        self._current = None
        self._stopping = False

    # lifecycle
    def stop(self):
        """Close the link (1001 "agent stopping") and stop the request workers."""
        with self._lock:
            self._stopping = True
            current, self._current = self._current, None
        if current is not None:
            current.close(protocol.CLOSE_GOING_AWAY, protocol.CLOSE_REASON_STOPPING)
        self.hub.wake()
        self.workers.stop()

    @property
    def current(self):
        with self._lock:
            return self._current

    def _adopt(self, link):
        with self._lock:
            if self._stopping:
                return False
            old, self._current = self._current, link
        if old is not None:
            log.info("a new link from %s replaces the link from %s", link.peer, old.peer)
            # In a thread: closing a dead peer's link may wait CLOSE_WAIT_S; the new link must not.
            reason = (protocol.CLOSE_GOING_AWAY, protocol.CLOSE_REASON_REPLACED)
            threading.Thread(target=old.close, args=reason, name="agent-link-replaced", daemon=True).start()
        return True

    def _release(self, link):
        with self._lock:
            if self._current is link:
                self._current = None

    # one connection, start to end (runs in the connection's Werkzeug thread)
    def serve(self, ws, peer):
        try:
            self._handshake(ws)
        except _Refused as exc:
            log.warning("refused a connection from %s: %s", peer, exc)
            self._refuse(ws)
            return
        except (ConnectionClosed, OSError):
            log.info("a connection from %s closed during the handshake", peer)
            return
        link = Link(ws, peer)
        if not self._adopt(link):
            link.close(protocol.CLOSE_GOING_AWAY, protocol.CLOSE_REASON_STOPPING)
            return
        log.info("control plane link from %s is up", peer)
        link_up = getattr(self.service, "link_up", None)  # test services may not have it
        if link_up is not None:
            link_up(peer)
        sender = None
        try:
            if not link.send(self._hello()):
                return
            self._send_events(link, until_empty=True)  # the replay, before any request is read
            sender = threading.Thread(target=self._push_events, args=(link,), name="agent-events",
                                      daemon=True)
            sender.start()
            threading.Thread(target=self._push_resources, args=(link,), name="agent-resources",
                             daemon=True).start()
            while not link.closed.is_set():
                try:
                    raw = ws.receive(timeout=1)
                except ConnectionClosed:
                    break
                if raw is not None:
                    self._on_frame(link, raw)
        finally:
            link.close(1011, "internal error")  # a no-op unless the loop ended by an exception
            self._release(link)
            self.hub.wake()
            if sender is not None:
                sender.join(CLOSE_WAIT_S)
            log.info("control plane link from %s is down", peer)

    def _expect(self, ws, frame_type):
        raw = ws.receive(timeout=protocol.HANDSHAKE_TIMEOUT_S)
        if raw is None:
            raise _Refused(f"no {frame_type} within {protocol.HANDSHAKE_TIMEOUT_S} s")
        try:
            frame = protocol.decode(raw)
        except protocol.ProtocolError as exc:
            raise _Refused(f"malformed {frame_type} ({exc.message})") from None
        if frame["type"] == protocol.AUTH_FAILED and frame_type == protocol.AUTH_PROVE:
            raise _Refused("the control plane did not accept this agent's proof (the tokens differ)")
        if frame["type"] != frame_type:
            raise _Refused(f"expected {frame_type}, got {frame['type'][:40]!r}")
        return frame

    def _handshake(self, ws):
        begin = self._expect(ws, protocol.AUTH_BEGIN)
        if begin.get("protocol") != protocol.PROTOCOL_VERSION:
            raise _Refused(f"protocol version {str(begin.get('protocol'))[:20]!r}; "
                           f"this agent speaks {protocol.PROTOCOL_VERSION}")
        client_nonce = begin.get("client_nonce")
        if not protocol.valid_nonce(client_nonce):
            raise _Refused(f"client_nonce must be {2 * protocol.NONCE_BYTES} lowercase hex digits")
        verifier = self.credentials.verifier  # one verifier for the whole handshake
        agent_nonce = protocol.new_nonce()
        ws.send(protocol.encode({
            "type": protocol.AUTH_CHALLENGE, "agent_nonce": agent_nonce,
            "proof": protocol.agent_proof(verifier, client_nonce, agent_nonce, self.thumbprint),
        }))
        prove = self._expect(ws, protocol.AUTH_PROVE)
        expected = protocol.client_proof(verifier, client_nonce, agent_nonce, self.thumbprint)
        if not protocol.proofs_match(expected, prove.get("proof")):
            raise _Refused("bad token proof")

    @staticmethod
    def _refuse(ws):
        # No detail for the peer: what was wrong is in the agent's log only.
        try:
            ws.send(protocol.encode({"type": protocol.AUTH_FAILED}))
            ws.close(protocol.CLOSE_POLICY_VIOLATION)
        except (ConnectionClosed, OSError):
            pass

    def _hello(self):
        return {
            "type": protocol.HELLO,
            "agent_version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "node_id": self.settings.node_id,
            "capacity": {"cpus": psutil.cpu_count(logical=True) or 1,
                         "memory_bytes": psutil.virtual_memory().total},
            "thumbprint": self.thumbprint,
            "outbox": self.store.outbox_id(),
        }

    # events
    def _send_events(self, link, until_empty=False):
        """Send the outbox after link.last_sent; returns whether anything was sent."""
        sent = False
        while not link.closed.is_set():
            # Read before the batch: seqs only grow, so an empty batch means nothing up to
            # `latest` is left to send (all of it was acknowledged before this link). Without
            # this, a new link waited for events after 0 and the hub, whose latest seq is higher,
            # woke it at once, forever (issue #14.1).
            latest = self.store.last_event_seq()
            batch = self.store.events_after(link.last_sent, EVENT_BATCH)
            if not batch:
                link.last_sent = max(link.last_sent, latest)
            for item in batch:
                if not link.send({"type": protocol.EVENT, **item}):
                    return sent
                link.last_sent = item["seq"]
                sent = True
            if not until_empty or len(batch) < EVENT_BATCH:
                break
        return sent

    def _push_events(self, link):
        try:
            while not link.closed.is_set():
                if not self._send_events(link):
                    self.hub.wait(link.last_sent, timeout=5, stop=link.closed)
        except Exception:  # noqa: BLE001 - the store failing must not fail silently
            if link.closed.is_set():
                return  # the agent is stopping and closed the store under us
            log.exception("pushing events to %s failed; closing the link", link.peer)
            link.close(1011, "internal error")

    def _push_resources(self, link):
        """Resource figures right after hello and then every interval, while the link lives."""
        figures = getattr(self.service, "resources", None)
        if figures is None:
            return
        interval = getattr(self.settings, "resources_interval", protocol.RESOURCES_INTERVAL_S)
        while not link.closed.is_set():
            try:
                frame = {"type": protocol.RESOURCES, "at": utc_now(), **figures()}
            except Exception:  # noqa: BLE001 - a failed sample is skipped, the link stays
                log.exception("sampling resource figures failed")
            else:
                if not link.send(frame):
                    return
            link.closed.wait(interval)

    # requests
    def _on_frame(self, link, raw):
        try:
            frame = protocol.decode(raw)
        except protocol.ProtocolError as exc:
            link.send(protocol.error(None, exc.code, exc.message))
            return
        request_id = frame.get("id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        try:
            request_id, method, params = protocol.parse_request(frame)
        except protocol.ProtocolError as exc:
            link.send(protocol.error(request_id, exc.code, exc.message))
            return
        if method in INLINE_METHODS:
            self._answer(link, request_id, method, params)
        else:
            self.workers.submit(self._answer, link, request_id, method, params)

    def _answer(self, link, request_id, method, params):
        try:
            frame = protocol.ok(request_id, self._call(link, method, params))
            try:
                delivered = link.send(frame)
            except (TypeError, ValueError):
                raise TypeError(f"the result of {method} is not JSON") from None
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            code, message = _reported_error(exc) or (None, None)
            if code is None:
                trace = redact(traceback.format_exc(), _secret_values(params))
                log.error("request %r (%s) failed:\n%s", request_id, method, trace)
                code, message = protocol.INTERNAL, GENERIC_ERROR
            delivered = link.send(protocol.error(request_id, code, message))
        if not delivered:
            log.info("request %r (%s) finished after its link closed; the answer is dropped",
                     request_id, method)

    def _call(self, link, method, params):
        if method == protocol.PING:
            return {"pong": True}
        if method == protocol.EVENTS_ACK:
            seq = params.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise protocol.ProtocolError("seq must be a whole number >= 0")
            # Never past what this link was sent: an ack cannot drop events nobody has seen.
            self.store.ack_events(min(seq, link.last_sent))
            return {}
        if method == protocol.TOKEN_ROTATE:
            verifier = params.get("verifier")
            if not protocol.valid_verifier(verifier):
                raise protocol.ProtocolError("verifier must be 64 lowercase hex digits")
            self.credentials.rotate(verifier)
            log.info("token verifier rotated by the control plane at %s; new links must prove the new token",
                     link.peer)
            return {}
        if method == protocol.LOGS_FOLLOW:
            # The stream's lines go to this link only and end with it (never to the outbox).
            return self.service.follow_logs(params, link.send)
        return self.service.handle(method, params)


def _within_limit(frame, size):
    if frame.get("type") == protocol.RESPONSE:
        log.error("the answer to request %r is %d bytes, over the frame limit", frame.get("id"), size)
        return protocol.error(frame.get("id"), protocol.TOO_LARGE, f"the answer is {size} bytes, "
                              f"over the {protocol.MAX_FRAME_BYTES}-byte frame limit")
    # An event stored by an older agent, before events were bounded: replayed first on every
    # link, it would take each one down.
    log.warning("a %s frame of %d bytes goes out cut to the frame budget", frame.get("type"), size)
    if frame.get("type") == protocol.EVENT:
        return {**frame, "data": protocol.shrink(frame["data"], protocol.FRAME_BUDGET_BYTES - 1024)}
    return protocol.shrink(frame, protocol.FRAME_BUDGET_BYTES)


def _agent_error_class():
    try:
        from agent.errors import AgentError
    except ImportError:
        return None
    return AgentError


def _reported_error(exc):
    """(code, message) of an error meant for the peer, else None (it is an internal error)."""
    if isinstance(exc, protocol.ProtocolError):
        return exc.code, exc.message
    agent_error = _agent_error_class()
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    typed = agent_error is not None and isinstance(exc, agent_error)
    # Without agent.errors: any exception that carries a string code and message, the shape
    # AgentError has.
    if (typed or agent_error is None) and isinstance(code, str) and isinstance(message, str):
        if ERROR_CODE.match(code):
            return code, message
    return None


def _secret_values(value, secret=False):
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            key = str(key).lower()
            if key in SECRET_KEYS and isinstance(item, str):
                found.add(item)
            else:
                found |= _secret_values(item, secret or key in SECRET_TREES)
        return found - {""}
    if isinstance(value, list):
        return {v for item in value for v in _secret_values(item, secret)}
    return {value} if secret and isinstance(value, str) and value else set()


# --- the Flask app ------------------------------------------------------------------------------------
def create_agent_app(settings, service, store, credentials, thumbprint, hub=None):
    """The agent's WSGI app. `hub` is the EventHub the service publishes through (one is made
    on `store` when not given; every hub on a store wakes on every appended event)."""
    app = Flask("agent")
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": protocol.MAX_FRAME_BYTES,
                                         "receive_bytes": 65536}
    links = AgentLinks(settings, service, store, credentials, thumbprint, hub or EventHub(store))
    app.extensions["nullops_agent_links"] = links
    sock = Sock(app)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.before_request
    def _link_socket():
        if request.path == protocol.WEBSOCKET_PATH:
            _prepare_link_socket(request.environ.get("werkzeug.socket"))

    @sock.route(protocol.WEBSOCKET_PATH)
    def link(ws):
        # The query string is never read: a token put in the URL grants nothing.
        try:
            links.serve(ws, request.remote_addr)
        finally:
            _end_connection(ws)

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def _http_error(exc):
        return jsonify(error=exc.name.lower()), exc.code

    return app


def _end_connection(ws):
    """Finish the WebSocket close and close TCP, as the server side should (RFC 6455 7.1.1).

    simple-websocket's reader thread ends when the peer answers the close frame (or hangs up);
    a dead peer does neither, hence the bounded wait. Then the socket is shut down: closing it
    is not enough while Werkzeug still holds it, and Werkzeug, once the handler returns, writes
    an HTTP response after the close frame and drains the socket with a blocking read that
    would wait for the peer's EOF, while the peer waits for ours."""
    if ws.connected:
        try:
            ws.close(1011, "internal error")
        except (ConnectionClosed, OSError):
            pass
    ws.thread.join(CLOSE_WAIT_S)
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _prepare_link_socket(sock):
    """The link lives long: no read timeout (the HTTP phase had one), TCP keepalive instead, so a
    peer that vanished without a FIN is noticed within about two minutes."""
    if sock is None:
        return
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


# --- serving --------------------------------------------------------------------------------------------
class _RequestHandler(WSGIRequestHandler):
    timeout = HTTP_TIMEOUT_S

    def handle(self):
        # The TLS handshake runs here, in this connection's thread and under its timeout
        # (tls.server_context postpones it out of accept()).
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", self.client_address[0], exc)
                return
        super().handle()

    def log_request(self, code="-", size="-"):
        # Path without the query string: whatever a client put there stays out of the log.
        path = (getattr(self, "path", "") or "").split("?", 1)[0]
        headers = getattr(self, "headers", None)
        if headers is not None and headers.get("Upgrade", "").lower() == "websocket" and code == 200:
            code = 101  # flask-sock answers 101 itself; Werkzeug only sees the 200 it returns after
        log.info('%s "%s %s" %s', self.address_string(), getattr(self, "command", "-"), path, code)

    def version_string(self):
        return "nullops-agent"


def _cap_connections(server, limit):
    """At most `limit` connections served at once by a threaded socketserver: a slot is taken in
    process_request (the accept loop's thread) and given back in shutdown_request (the end of
    the connection's thread, or a refusal)."""
    slots = threading.BoundedSemaphore(limit)
    held, held_lock = set(), threading.Lock()
    process_request, shutdown_request = server.process_request, server.shutdown_request

    def capped_process_request(request, client_address):
        if not slots.acquire(blocking=False):
            log.warning("refused a connection from %s: %d connections are open (the cap)",
                        client_address[0], limit)
            shutdown_request(request)
            return
        with held_lock:
            held.add(id(request))
        process_request(request, client_address)

    def releasing_shutdown_request(request):
        try:
            shutdown_request(request)
        finally:
            with held_lock:
                mine = id(request) in held
                held.discard(id(request))
            if mine:
                slots.release()

    server.process_request = capped_process_request
    server.shutdown_request = releasing_shutdown_request


class AgentServer:
    """The TLS server for an agent app; `start()` serves in a thread, `stop()` ends it."""

    def __init__(self, app, host, port, ssl_context):
        self.app = app
        try:
            self._server = make_server(host, port, app, threaded=True, ssl_context=ssl_context,
                                       request_handler=_RequestHandler)
        except SystemExit:  # Werkzeug prints why (address in use, ...) and exits
            raise ServerError(f"cannot listen on {host}:{port}") from None
        _cap_connections(self._server, MAX_CONNECTIONS)
        self._thread = None

    @property
    def port(self):
        return self._server.port

    def start(self):
        # poll_interval: how soon serve_forever notices stop(); the default 0.5 s slows tests.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="agent-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop accepting, close the link (1001 "agent stopping"), stop the request workers."""
        if self._thread is not None:
            self._server.shutdown()  # waits for serve_forever to return
            self._thread.join(5)
        self.app.extensions["nullops_agent_links"].stop()
        self._server.server_close()
