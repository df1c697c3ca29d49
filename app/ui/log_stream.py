"""A service's log lines as they come, to the browser over a WebSocket (the deployment page's
"Follow" button). Through the controller's internal endpoint: the web tier holds no agent links.

The route is outside the UI blueprint's login check (a WebSocket cannot follow a redirect to the
login page), so the view checks everything itself, in the request: a logged-in user, an Origin
from this site (browsers send cookies with cross-site WebSocket handshakes), and view access to
the deployment, which answers as if it did not exist otherwise. Then the socket goes to the
process's WebSocket thread (app/websocket_handover.py) and the request's thread is free: a
stream holds no web thread (issue #14.4). The active controller caps streams per user and in all
(NULLOPS_LOG_STREAMS_PER_USER, NULLOPS_LOG_STREAMS_MAX); a follower over one is told so.

A stream may last hours, so the same checks run again every RECHECK_S seconds: it ends when the
session does (deactivation, a password change) or the user may no longer view the deployment (a
grant or membership removed). Logging out ends the tab's own streams as its page goes away; the
session cookie of another tab stays valid, as for every page."""
import asyncio
import contextlib
import json
from functools import partial
from urllib.parse import urlsplit

from flask import Blueprint, current_app, request
from flask_login import current_user
from websockets.exceptions import ConnectionClosed

from app import access
from app.auth_setup import user_for_session
from app.models import Deployment
from app.services import live
from app.services.errors import NotFound, ServiceError
from app.websocket_handover import hand_over

bp = Blueprint("log_stream", __name__)

HEARTBEAT_S = 15
RECHECK_S = 30          # a query or two per stream each time
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
    try:
        where = live.endpoint()
    except live.LiveDataUnavailable as exc:  # no controller has published its endpoint
        return hand_over(partial(_refuse, message=exc.message, code=CLOSE_TRY_LATER))
    stream = live.follow_logs(where, deployment.node_id, deployment.agent_id, step_id,
                              viewer=current_user.id, tail=100, heartbeat_s=HEARTBEAT_S)
    allowed = partial(_still_allowed, current_app._get_current_object(), current_user.get_id(),
                      deployment_id)
    return hand_over(partial(_follow, stream=stream, allowed=allowed))


async def _refuse(ws, message, code=CLOSE_POLICY):
    await ws.send(json.dumps({"error": message}))
    await ws.close(code, message[:120])


async def _follow(ws, stream, allowed):
    """Relay the stream until it ends, the browser goes (Stop following, a closed tab, no answer
    to pings) or the viewer may no longer see it, whichever comes first; the others are
    cancelled, which unfollows on the node."""
    relay = asyncio.create_task(_relay(ws, stream))
    gone = asyncio.create_task(_until_gone(ws))
    revoked = asyncio.create_task(_until_refused(allowed))
    await asyncio.wait({relay, gone, revoked}, return_when=asyncio.FIRST_COMPLETED)
    for task in (relay, gone, revoked):
        task.cancel()
    await asyncio.gather(relay, gone, revoked, return_exceptions=True)
    if not revoked.cancelled() and revoked.exception() is None:
        try:
            await _refuse(ws, revoked.result())
        except ConnectionClosed:
            pass


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


async def _until_refused(allowed):
    """The refusal, once the checks made at the start fail; the database work runs in a thread
    of its own (asyncio's default executor), never on the streams' loop."""
    while True:
        await asyncio.sleep(RECHECK_S)
        refusal = await asyncio.to_thread(allowed)
        if refusal is not None:
            return refusal


def _still_allowed(app, session_id, deployment_id):
    with app.app_context():
        user = user_for_session(session_id)
        if user is None:
            return "your session ended: log in to NullOps again"
        try:
            access.get_visible(user, Deployment, deployment_id, "deployment")
        except NotFound as exc:
            return exc.message
        return None
