"""A service's log lines as they come, to the browser over a WebSocket (the deployment page's
"Follow" button). Through the controller's internal endpoint: the web tier holds no agent links.

WebSocket routes are outside the UI blueprint's login check, so this one checks everything
itself: a logged-in user, an Origin from this site (browsers send cookies with cross-site
WebSocket handshakes), and view access to the deployment, which answers as if it did not exist
otherwise."""
import json
from urllib.parse import urlsplit

from flask import request
from flask_login import current_user
from simple_websocket import ConnectionClosed

from app import access
from app.extensions import db, sock
from app.models import Deployment
from app.services import live
from app.services.errors import NotFound, ServiceError

HEARTBEAT_S = 15
CLOSE_POLICY = 1008


def _same_origin():
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


def _refuse(ws, message):
    ws.send(json.dumps({"error": message}))
    ws.close(CLOSE_POLICY, message[:120])


@sock.route("/deployments/<int:deployment_id>/logs/<step_id>/follow")
def follow_deployment_logs(ws, deployment_id, step_id):
    if not current_user.is_authenticated or not _same_origin():
        return _refuse(ws, "log in to NullOps in this browser first")
    try:
        deployment = access.get_visible(current_user, Deployment, deployment_id, "deployment")
    except NotFound as exc:
        return _refuse(ws, exc.message)
    node_id, agent_id = deployment.node_id, deployment.agent_id
    db.session.remove()  # a stream may last hours: hold no database connection meanwhile
    if node_id is None:
        return _refuse(ws, "the deployment has no node any more")
    stream = live.follow_logs(node_id, agent_id, step_id, tail=100, idle_timeout=HEARTBEAT_S,
                              heartbeat=True)
    try:
        for lines in stream:
            ws.send(json.dumps({"lines": lines}))   # [] is the heartbeat: a gone browser raises
        ws.send(json.dumps({"end": "the log stream ended (the service stopped or was replaced)"}))
    except ServiceError as exc:
        ws.send(json.dumps({"error": exc.message}))
    except ConnectionClosed:
        pass  # the browser went away: closing the generator unfollows on the agent
    finally:
        stream.close()
