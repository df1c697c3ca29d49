"""A service's log lines as they come, to the browser over a WebSocket (the deployment page's
"Follow" button). Through the controller's internal endpoint: the web tier holds no agent links.

The route is outside the UI blueprint's login check (a WebSocket cannot follow a redirect to the
login page), so the view checks everything itself, in the request: a logged-in user, an Origin
from this site (browsers send cookies with cross-site WebSocket handshakes), and view access to
the deployment, which answers as if it did not exist otherwise. Then the socket goes to the
process's WebSocket thread (app/websocket_handover.py) and the request's thread is free: a
stream holds no web thread (issue #14.4). The active controller caps streams per user and in all
(NULLOPS_LOG_STREAMS_PER_USER, NULLOPS_LOG_STREAMS_MAX); a follower over one is told so."""
import asyncio
import contextlib
import json
from functools import partial
from urllib.parse import urlsplit

from flask import Blueprint, request
from flask_login import current_user
from websockets.exceptions import ConnectionClosed

from app import access
from app.models import Deployment
from app.services import live
from app.services.errors import NotFound, ServiceError
from app.websocket_handover import hand_over

bp = Blueprint("log_stream", __name__)

HEARTBEAT_S = 15
CLOSE_POLICY = 1008     # not allowed
CLOSE_TRY_LATER = 1013  # over a cap: passes once another stream stops


def _same_origin():
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


@bp.route("/deployments/<int:deployment_id>/logs/<step_id>/follow", websocket=True)
def follow_deployment_logs(deployment_id, step_id):
    if not current_user.is_authenticated or not _same_origin():
        return hand_over(partial(_refuse, message="log in to NullOps in this browser first"))
    try:
        deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment")
    except NotFound as exc:
        return hand_over(partial(_refuse, message=exc.message))
    if deployment.node_id is None:
        return hand_over(partial(_refuse, message="the deployment has no node any more"))
    stream = live.follow_logs(live.endpoint(), deployment.node_id, deployment.agent_id, step_id,
                              viewer=current_user.id, tail=100, heartbeat_s=HEARTBEAT_S)
    return hand_over(partial(_follow, stream=stream))


async def _refuse(ws, message, code=CLOSE_POLICY):
    await ws.send(json.dumps({"error": message}))
    await ws.close(code, message[:120])


async def _follow(ws, stream):
    """Relay the stream until it ends or the browser goes (Stop following, a closed tab, no answer
    to pings), whichever comes first; the other is cancelled, which unfollows on the node."""
    relay = asyncio.create_task(_relay(ws, stream))
    gone = asyncio.create_task(_until_gone(ws))
    await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (relay, gone):
        task.cancel()
    await asyncio.gather(relay, gone, return_exceptions=True)


async def _relay(ws, stream):
    try:
        async with contextlib.aclosing(stream):
            async for lines in stream:
                await ws.send(json.dumps({"lines": lines}))  # [] is the heartbeat
        await ws.send(json.dumps({"end": "the log stream ended (the service stopped or was replaced)"}))
    except live.TooManyStreams as exc:
        await _refuse(ws, exc.message, CLOSE_TRY_LATER)
    except ServiceError as exc:
        await ws.send(json.dumps({"error": exc.message}))
    except ConnectionClosed:
        pass


async def _until_gone(ws):
    try:
        async for _message in ws:  # browsers send nothing here; whatever comes is dropped
            pass
    except ConnectionClosed:
        pass
