"""Browser WebSockets that hold no web thread: the view answers the handshake, then hands the
connection to one asyncio thread per web process, and its own thread goes back to serving
requests (issue #14.4: a followed log held a gunicorn thread for as long as it was open, so as
many viewers as threads stalled every page, API call and /healthz).

The request comes in through the WSGI server as usual, on the same origin and port: pages and
sockets need no separate listener or proxy route, the view has Flask (the session, the login,
the access module) for its checks, and `nullops web` (gunicorn) and `nullops dev` (werkzeug) work
alike. The WebSocket protocol is the `websockets` library's: its sans-I/O layer checks the
handshake and writes the answer, its asyncio connection (pings, closing handshake, flow
control) runs the rest.
"""
import asyncio
import errno
import logging
import os
import socket
import ssl
import threading

from flask import Response, request
from websockets.asyncio.connection import Connection
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger("nullops.websockets")

PING_INTERVAL_S = 20       # a browser gone without a word is noticed within about twice this
INCOMING_MAX_BYTES = 4096  # browsers send nothing on these sockets but control frames


def hand_over(handler):
    """Answer this request's WebSocket handshake and run `await handler(ws)` on the process's
    WebSocket thread with the connection (a `websockets` asyncio connection, closed when the
    handler returns). Returns what the view returns. The handler runs without the app: take
    what it needs from the request first, and release the database session."""
    raw = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if not isinstance(raw, socket.socket) or isinstance(raw, ssl.SSLSocket):
        # TLS ends in front of `nullops web` (docs/install.md); another server would need its own way.
        return Response("this server cannot hand a WebSocket over; run `nullops web`", status=501)
    handshake = ServerProtocol()
    answer = handshake.accept(Request(request.path, Headers(request.headers.items())))
    if answer.status_code != 101:
        return Response(answer.body, status=answer.status_code, headers=list(answer.headers.raw_items()))
    handshake.send_response(answer)
    raw.sendall(b"".join(handshake.data_to_send()))
    # Frames from here on go through a protocol that starts open: the handshake's still expects
    # the request's bytes, which the WSGI server read, and would take frames for them.
    protocol = ServerProtocol(state=State.OPEN, max_size=INCOMING_MAX_BYTES)
    asyncio.run_coroutine_threadsafe(_serve(_take(raw), protocol, handler), _hub.loop())
    return _HandedOver()


def _take(raw):
    """Our own descriptor of the connection. The server closes its socket when the view returns,
    and gunicorn and socketserver shut it down first (FIN), which would end the connection for
    every descriptor: the server's is pointed at a socket whose peer is already gone, so its
    last reads see the end, its shutdown and close touch only that one."""
    taken = socket.socket(fileno=os.dup(raw.fileno()))
    spent, peer = socket.socketpair()
    peer.close()
    os.dup2(spent.fileno(), raw.fileno())
    spent.close()
    return taken


class _HandedOver(Response):
    def __call__(self, environ, start_response):
        # Nothing more goes to the server's socket. A reset is what gunicorn's thread worker and
        # werkzeug both end a request on without writing or logging anything (flask-sock does
        # the same with server-specific tricks); the connection itself lives on in the hub.
        raise ConnectionResetError(errno.ECONNRESET, "WebSocket handed over")


async def _serve(sock, protocol, handler):
    loop = asyncio.get_running_loop()
    try:
        # websockets' asyncio connection over the sans-I/O protocol the handshake opened: what
        # its own server builds after a handshake, minus the listener we do not have.
        _, ws = await loop.connect_accepted_socket(
            lambda: Connection(protocol, ping_interval=PING_INTERVAL_S, ping_timeout=PING_INTERVAL_S,
                               close_timeout=5), sock)
    except OSError:
        sock.close()
        return
    ws.start_keepalive()
    try:
        await handler(ws)
    except Exception:
        log.exception("a WebSocket handler failed")
    finally:
        await ws.close()


class _Hub:
    """The asyncio loop of this process's WebSockets, on a thread started at the first one. Per
    process: a gunicorn worker forked after the app was loaded starts its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop, self._pid = None, None

    def loop(self):
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="websockets", daemon=True).start()
            return self._loop


_hub = _Hub()
