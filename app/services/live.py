"""Live data from agents for the web tier, through the active controller's internal endpoint
(app/controller/internal.py): found and pinned through the database (ControllerEndpoint), then
a proof answered to its challenge. The caller has already asked the access module."""
import asyncio
import contextlib
import dataclasses
import itertools
import json
import ssl

from flask import current_app
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from agent import protocol
from app.controller.internal import internal_proof, internal_token
from app.extensions import db
from app.models import ControllerEndpoint
from app.services.errors import ServiceError

_ids = itertools.count(1)


class LiveDataUnavailable(ServiceError):
    status = 503
    code = "live_data_unavailable"


class NodeRequestFailed(ServiceError):
    status = 502
    code = "node_request_failed"


class TooManyStreams(ServiceError):
    status = 429
    code = "too_many_streams"


def _unreachable():
    return LiveDataUnavailable("the controller is not reachable for live data; is `nullops "
                               "controller` running?")


def _not_ready():
    return LiveDataUnavailable("the controller refused this web process (session secrets differ?)")


def _impostor():
    return LiveDataUnavailable("the controller's internal endpoint presented another certificate "
                               "than the active controller published; not connecting")


def _client_tls():
    """No CA: the certificate is checked by its thumbprint against the database's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _pinned(ssl_object, thumbprint):
    return protocol.thumbprint_of_der(ssl_object.getpeercert(binary_form=True)) == thumbprint


def _answer(challenge, token):
    """The proof for the endpoint's first frame; ValueError when it is not a challenge."""
    if not isinstance(challenge, dict) or challenge.get("type") != "challenge" \
            or not isinstance(challenge.get("nonce"), str):
        raise ValueError("no challenge")
    return json.dumps({"proof": internal_proof(token, challenge["nonce"])})


def _failure(error):
    """The exception for a request the controller answered with an error."""
    code, message = error.get("code"), error.get("message")
    if code == "node_offline":
        return LiveDataUnavailable(f"the node is offline: {message}")
    if code == "too_many_streams":  # over a cap on followed logs (app/controller/internal.py)
        return TooManyStreams(message)
    return NodeRequestFailed(f"the node answered {code}: {message}")


@contextlib.contextmanager
def _open(timeout=5):
    where = endpoint()
    try:
        ws = connect(f"wss://{where.address}", ssl=_client_tls(), open_timeout=timeout, proxy=None,
                     compression=None, max_size=protocol.MAX_FRAME_BYTES)
    except (OSError, TimeoutError, WebSocketException):
        raise _unreachable() from None
    with ws:
        if not _pinned(ws.socket, where.thumbprint):
            raise _impostor()
        try:
            ws.send(_answer(json.loads(ws.recv(timeout)), where.token))
            ready = json.loads(ws.recv(timeout))
        except (OSError, TimeoutError, WebSocketException, ValueError):
            raise _unreachable() from None
        if ready.get("type") != "ready":
            raise _not_ready()
        yield ws


def _request(ws, node_id, method, params, timeout):
    request_id = next(_ids)
    ws.send(json.dumps({"id": request_id, "node_id": node_id, "method": method, "params": params or {}}))
    while True:
        try:
            frame = json.loads(ws.recv(timeout))
        except TimeoutError:
            raise NodeRequestFailed(f"the node did not answer {method} within {timeout} s") from None
        except ConnectionClosed:
            raise LiveDataUnavailable("the controller closed the connection") from None
        if frame.get("type") == "response" and frame.get("id") == request_id:
            if frame.get("ok"):
                return frame["result"]
            raise _failure(frame.get("error") or {})


def node_call(node_id, method, params=None, timeout=60):
    """One read-only request relayed to a node (logs.tail, stats.get, run.get, ...)."""
    with _open() as ws:
        return _request(ws, node_id, method, params, timeout)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the active controller's internal endpoint listens, its certificate's thumbprint and
    this installation's proof key, read while a request has the app: followed logs run where it
    is not (app/ui/log_stream.py)."""
    address: str
    thumbprint: str
    token: str


def endpoint():
    """The active controller's endpoint as it published it (read anew each time: a failover
    moves it)."""
    row = db.session.get(ControllerEndpoint, ControllerEndpoint.ACTIVE, populate_existing=True)
    if row is None:
        raise _unreachable()
    return Endpoint(row.address, row.thumbprint, internal_token(current_app.config["SECRET_KEY"]))


async def follow_logs(endpoint, node_id, deployment_id, step_id, viewer, tail=100, heartbeat_s=None,
                      timeout=5):
    """Yield batches of log lines of a service as they come (asyncio); ends with the stream.
    Closing the generator (or cancelling the task iterating it) closes the connection, and the
    controller unfollows. `viewer` is the user it is for: the controller caps followed logs per
    user and in all, and one over a cap raises TooManyStreams. Quiet for `heartbeat_s` seconds:
    an empty batch comes, so the caller can check its own peer."""
    try:
        ws = await async_connect(f"wss://{endpoint.address}", ssl=_client_tls(), open_timeout=timeout,
                                 proxy=None, compression=None, max_size=protocol.MAX_FRAME_BYTES)
    except (OSError, TimeoutError, WebSocketException):
        raise _unreachable() from None
    async with ws:
        if not _pinned(ws.transport.get_extra_info("ssl_object"), endpoint.thumbprint):
            raise _impostor()
        try:
            async with asyncio.timeout(timeout):
                await ws.send(_answer(json.loads(await ws.recv()), endpoint.token))
                ready = json.loads(await ws.recv())
        except (OSError, TimeoutError, WebSocketException, ValueError):
            raise _unreachable() from None
        if ready.get("type") != "ready":
            raise _not_ready()
        request_id = next(_ids)
        await ws.send(json.dumps({
            "id": request_id, "node_id": node_id, "viewer": viewer, "method": protocol.LOGS_FOLLOW,
            "params": {"deployment_id": deployment_id, "step_id": step_id, "tail": tail}}))
        try:
            async with asyncio.timeout(30):
                while (answer := json.loads(await ws.recv())).get("id") != request_id:
                    pass
        except TimeoutError:
            raise NodeRequestFailed(f"the node did not answer {protocol.LOGS_FOLLOW} within 30 s") from None
        except ConnectionClosed:
            raise LiveDataUnavailable("the controller closed the connection") from None
        if not answer.get("ok"):
            raise _failure(answer.get("error") or {})
        stream_id = answer["result"]["stream_id"]
        while True:
            try:
                async with asyncio.timeout(heartbeat_s):
                    frame = json.loads(await ws.recv())  # cancelling recv() loses nothing
            except TimeoutError:
                yield []
                continue
            except ConnectionClosed:
                return
            if frame.get("type") != protocol.STREAM or frame.get("stream_id") != stream_id:
                continue
            if frame.get("end"):
                return
            yield frame["lines"]
