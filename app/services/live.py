"""Live data from agents for the web tier, through the active controller's internal endpoint
(app/controller/internal.py). The caller has already asked the access module."""
import contextlib
import itertools
import json

from flask import current_app
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from agent import protocol
from app.controller.internal import internal_token
from app.services.errors import ServiceError

_ids = itertools.count(1)


class LiveDataUnavailable(ServiceError):
    status = 503
    code = "live_data_unavailable"


class NodeRequestFailed(ServiceError):
    status = 502
    code = "node_request_failed"


@contextlib.contextmanager
def _open(timeout=5):
    address = current_app.config["NULLOPS_CONTROLLER_INTERNAL"]
    unreachable = LiveDataUnavailable("the controller is not reachable for live data; is `nullops "
                                      "controller` running?")
    try:
        ws = connect(f"ws://{address}", open_timeout=timeout, proxy=None, compression=None,
                     max_size=protocol.MAX_FRAME_BYTES)
    except (OSError, TimeoutError, WebSocketException):
        raise unreachable from None
    with ws:
        try:
            ws.send(json.dumps({"token": internal_token(current_app.config["SECRET_KEY"])}))
            ready = json.loads(ws.recv(timeout))
        except (OSError, TimeoutError, WebSocketException, ValueError):
            raise unreachable from None
        if ready.get("type") != "ready":
            raise LiveDataUnavailable("the controller refused this web process (session secrets differ?)")
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
            error = frame.get("error") or {}
            if error.get("code") == "node_offline":
                raise LiveDataUnavailable(f"the node is offline: {error.get('message')}")
            raise NodeRequestFailed(f"the node answered {error.get('code')}: {error.get('message')}")


def node_call(node_id, method, params=None, timeout=60):
    """One read-only request relayed to a node (logs.tail, stats.get, run.get, ...)."""
    with _open() as ws:
        return _request(ws, node_id, method, params, timeout)


def follow_logs(node_id, deployment_id, step_id, tail=100, idle_timeout=None, heartbeat=False):
    """Yield batches of log lines of a service as they come; ends with the stream (or when
    the caller closes the generator, which unfollows). Quiet for `idle_timeout` seconds: the
    stream ends, or with `heartbeat` an empty batch comes (so a caller can check its own peer)."""
    with _open() as ws:
        params = {"deployment_id": deployment_id, "step_id": step_id, "tail": tail}
        stream_id = _request(ws, node_id, protocol.LOGS_FOLLOW, params, 30)["stream_id"]
        while True:
            try:
                frame = json.loads(ws.recv(idle_timeout))
            except TimeoutError:
                if heartbeat:
                    yield []
                    continue
                return
            except ConnectionClosed:
                return
            if frame.get("type") != protocol.STREAM or frame.get("stream_id") != stream_id:
                continue
            if frame.get("end"):
                return
            yield frame["lines"]
