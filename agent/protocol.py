"""The wire contract between the control plane and an agent. docs/protocol.md explains it.

Every frame is one JSON object with a "type". The connection starts with a mutual
challenge-response proving both sides hold the node token (the token itself never crosses the
wire), then the agent says hello; after that the control plane sends requests, the agent
answers each with a response carrying the same id, and pushes events with an increasing
sequence number that the control plane acknowledges.
"""
import hashlib
import hmac
import json
import math
import re
import secrets

from agent import __version__ as AGENT_VERSION

PROTOCOL_VERSION = 2
# Receivers close a link on a larger frame (1009), so every sender keeps below it: what can grow
# without bound (log lines, the desired state, events) is cut into parts of at most a budget,
# which leaves room for the envelope and for the relay to the web tier (issue #14.2).
MAX_FRAME_BYTES = 4 * 1024 * 1024
FRAME_BUDGET_BYTES = 1024 * 1024   # an answer's log lines, a stream batch, a state.sync part
EVENT_BUDGET_BYTES = 256 * 1024    # one event in the outbox
WEBSOCKET_PATH = "/ws"
HANDSHAKE_TIMEOUT_S = 10   # the agent waits this long for each handshake frame

# WebSocket close codes the agent uses (RFC 6455)
CLOSE_GOING_AWAY = 1001        # "replaced" by a newer link, or "agent stopping"
CLOSE_POLICY_VIOLATION = 1008  # handshake refused (bad proof, protocol version, timeout)
CLOSE_REASON_REPLACED = "replaced"
CLOSE_REASON_STOPPING = "agent stopping"

# Handshake frames
AUTH_BEGIN = "auth.begin"          # control plane -> agent: {protocol, client_nonce}
AUTH_CHALLENGE = "auth.challenge"  # agent -> control plane: {agent_nonce, proof}
AUTH_PROVE = "auth.prove"          # control plane -> agent: {proof}
AUTH_FAILED = "auth.failed"        # either side, then close; carries no detail
HELLO = "hello"                    # agent -> control plane after a good proof

# Message frames
REQUEST = "request"      # {id, method, params}
RESPONSE = "response"    # {id, ok, result} or {id, ok: false, error: {code, message}}
EVENT = "event"          # {seq, event, at, data}
# A followed log: {stream_id, lines} while it runs, then {stream_id, end: true, reason}. Streams
# are live data: not stored, not acknowledged, gone with the link.
STREAM = "stream"

# Request methods
PING = "ping"
DEPLOYMENT_APPLY = "deployment.apply"    # {deployment: <spec>, secrets: {NAME: value}} -> {run_id}
DEPLOYMENT_DELETE = "deployment.delete"  # {deployment_id} -> {run_id}; cancels a running run
DEPLOYMENT_LIST = "deployment.list"      # {} -> {deployments: [{deployment_id, status, run_id}]}
# {deployments: [{deployment, secrets, registries}], keep?: [deployment ids]}: the desired state,
# in parts of at most FRAME_BUDGET_BYTES; the last part lists every deployment the node should
# run in `keep`, and the agent removes the others then.
STATE_SYNC = "state.sync"
RUN_GET = "run.get"                      # {run_id} -> {run: {..., steps: [...]}}
LOGS_TAIL = "logs.tail"                  # {deployment_id, step_id, tail} -> {lines: [...]}
LOGS_FOLLOW = "logs.follow"              # {deployment_id, step_id, tail} -> {stream_id}; then STREAM frames
LOGS_UNFOLLOW = "logs.unfollow"          # {stream_id} -> {}
STATS_GET = "stats.get"                  # {} -> {host: {...}, containers: [...], engine: {...}}
EVENTS_ACK = "events.ack"                # {seq} -> {}; events up to seq are forgotten
TOKEN_ROTATE = "token.rotate"            # {verifier} -> {}; effective at once
PLUGINS_PREPULL = "plugins.prepull"      # {images: [{image, auth?}]} -> {pulled, failed}
METHODS = frozenset({
    PING, DEPLOYMENT_APPLY, DEPLOYMENT_DELETE, DEPLOYMENT_LIST, STATE_SYNC, RUN_GET, LOGS_TAIL,
    LOGS_FOLLOW, LOGS_UNFOLLOW, STATS_GET, EVENTS_ACK, TOKEN_ROTATE, PLUGINS_PREPULL,
})

# Events pushed by the agent
RUN_PROGRESS = "run.progress"            # {run_id, deployment_id, status, step_id?, step_status?, message?}
STEP_LOG = "step.log"                    # {run_id, deployment_id, step_id, lines: [...]}
# Any event or live frame too large for its budget arrives cut, with "truncated": true.
DEPLOYMENT_STATUS = "deployment.status"  # {deployment_id, status, message?}
# Live frame (not an event: not stored, not replayed), sent every RESOURCES_INTERVAL_S on the link:
# {"type": "resources", "at", "host": {cpus, cpu_percent, memory_total, memory_available},
#  "allocated": {cpus, memory_mb}} -- what admission needs (ARCHITECTURE.md, resource admission).
RESOURCES = "resources"
RESOURCES_INTERVAL_S = 15

# Error codes in responses
BAD_REQUEST = "bad_request"
UNKNOWN_METHOD = "unknown_method"
NOT_FOUND = "not_found"
REFUSED = "refused"          # a spec the agent will not run (privileged, host mounts, ...)
BUSY = "busy"                # another run of the deployment, or too many log streams
TOO_LARGE = "too_large"      # an answer that would not fit in a frame
INTERNAL = "internal_error"


class ProtocolError(Exception):
    """A frame that breaks the contract; `code` goes back to the peer in the response."""

    def __init__(self, message, code=BAD_REQUEST):
        super().__init__(message)
        self.code = code
        self.message = message


def encode(frame):
    return json.dumps(frame, separators=(",", ":"), sort_keys=True)


def encoded_size(value):
    """Bytes of `value` on the wire: encode() escapes everything past ASCII, so characters are
    bytes (a binary byte of a log line becomes six)."""
    return len(encode(value))


def parts(items, budget):
    """`items` in consecutive lists, each encoding within `budget` bytes when it can (an item
    larger than the budget alone is a part of its own)."""
    part, size = [], 2
    for item in items:
        item_size = encoded_size(item) + 1
        if part and size + item_size > budget:
            yield part
            part, size = [], 2
        part.append(item)
        size += item_size
    if part:
        yield part


def newest_within(lines, budget):
    """(the newest of `lines` that encode within `budget` bytes, how many older ones were left out)."""
    kept, size = [], 2
    for line in reversed(lines):
        size += encoded_size(line) + 1
        if size > budget:
            break
        kept.append(line)
    kept.reverse()
    return kept, len(lines) - len(kept)


CUT_MARK = " [cut]"


def shrink(data, budget):
    """`data` (a JSON object) made to encode within `budget` bytes and marked "truncated": true:
    the largest string is halved or the largest list loses its older half, until it fits. For
    events and live frames, which must still arrive when they cannot arrive whole."""
    if encoded_size(data) <= budget:
        return data
    data = {**json.loads(encode(data)), "truncated": True}
    while encoded_size(data) > budget:
        holder, key = _largest_cuttable(data)
        if holder is None:
            return {"truncated": True}
        value = holder[key]
        if isinstance(value, str):
            holder[key] = value[:len(value) // 2] + CUT_MARK
        else:
            holder[key] = value[len(value) // 2:]
    return data


def _largest_cuttable(value):
    """(container, key) of the largest string or list in `value` that can still be cut."""
    best, best_size = (None, None), 0
    stack = [value]
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            item = container[key]
            if isinstance(item, dict | list):
                stack.append(item)
            cuttable = (isinstance(item, str) and len(item) > 4 * len(CUT_MARK)
                        or isinstance(item, list) and len(item) > 1)
            if cuttable and (size := encoded_size(item)) > best_size:
                best, best_size = (container, key), size
    return best


def _not_json_number(name):
    # Python's json reads NaN, Infinity and -Infinity; JSON has no such numbers, and what a frame
    # carries ends up in JSON columns, which PostgreSQL keeps to JSON.
    raise ProtocolError(f"frame holds {name}, not a finite number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # a literal too large for a float, such as 1e400
        raise ProtocolError(f"frame holds {text[:24]}, not a finite number")
    return value


def decode(raw):
    """Parse one frame; raise ProtocolError for anything that is not a JSON object with a type."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_FRAME_BYTES:
            raise ProtocolError("frame too large")
        raw = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    try:
        frame = json.loads(raw, parse_constant=_not_json_number, parse_float=_finite_float)
    except ValueError:
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("frame must be a JSON object with a string 'type'")
    return frame


def request(request_id, method, params=None):
    return {"type": REQUEST, "id": request_id, "method": method, "params": params or {}}


def ok(request_id, result=None):
    return {"type": RESPONSE, "id": request_id, "ok": True, "result": result or {}}


def error(request_id, code, message):
    return {"type": RESPONSE, "id": request_id, "ok": False,
            "error": {"code": code, "message": message}}


def parse_request(frame):
    if frame.get("type") != REQUEST:
        raise ProtocolError(f"expected a request, got {frame.get('type')!r}")
    request_id = frame.get("id")
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        raise ProtocolError("request id must be a string or an integer")
    method = frame.get("method")
    if method not in METHODS:
        raise ProtocolError(f"unknown method {method!r}", UNKNOWN_METHOD)
    params = frame.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("params must be a JSON object")
    return request_id, method, params


# --- Token proof -----------------------------------------------------------------------------
# Both sides hold the verifier V = HMAC-SHA256(token, "nullops-agent-verifier/v1"): the agent
# keeps only V on disk, the control plane keeps V (encrypted). Proofs bind both nonces and the
# agent's certificate thumbprint, so a proof cannot be replayed or relayed through another TLS
# endpoint.

VERIFIER_LABEL = b"nullops-agent-verifier/v1"
NONCE_BYTES = 32


def verifier_for(token):
    return hmac.new(token.encode("utf-8"), VERIFIER_LABEL, hashlib.sha256).hexdigest()


def _proof(verifier, role, first_nonce, second_nonce, thumbprint):
    message = "|".join((role, first_nonce, second_nonce, thumbprint.lower())).encode()
    return hmac.new(bytes.fromhex(verifier), message, hashlib.sha256).hexdigest()


def agent_proof(verifier, client_nonce, agent_nonce, thumbprint):
    return _proof(verifier, "agent", client_nonce, agent_nonce, thumbprint)


def client_proof(verifier, client_nonce, agent_nonce, thumbprint):
    return _proof(verifier, "control-plane", agent_nonce, client_nonce, thumbprint)


def proofs_match(expected, given):
    return isinstance(given, str) and hmac.compare_digest(expected, given)


_NONCE = re.compile(rf"^[0-9a-f]{{{2 * NONCE_BYTES}}}$")
_VERIFIER = re.compile(r"^[0-9a-f]{64}$")


def new_nonce():
    return secrets.token_hex(NONCE_BYTES)


def valid_nonce(value):
    return isinstance(value, str) and bool(_NONCE.match(value))


def valid_verifier(value):
    """A verifier as `token.rotate` carries it: 64 lowercase hex digits (an HMAC-SHA256)."""
    return isinstance(value, str) and bool(_VERIFIER.match(value))


def valid_output_key(value):
    """A deployment's output key as apply, state.sync and delete carry it: 64 lowercase hex
    digits (an AES-256 key; agent/sealed.py)."""
    return isinstance(value, str) and bool(_VERIFIER.match(value))


def thumbprint_of_der(der):
    """The agent certificate's thumbprint as both sides write it: SHA-256 of the DER, lowercase hex.
    The control plane takes `der` from `ssl_socket.getpeercert(binary_form=True)`."""
    return hashlib.sha256(der).hexdigest()


def check_agent_proof(verifier, client_nonce, agent_nonce, thumbprint, proof):
    """The control plane's check of `auth.challenge`: True only for an agent that holds the
    verifier and answered on the TLS endpoint whose certificate has `thumbprint`. On False the
    control plane sends `auth.failed` and closes, without ever sending its own proof."""
    if not valid_nonce(agent_nonce):
        return False
    return proofs_match(agent_proof(verifier, client_nonce, agent_nonce, thumbprint), proof)


__all__ = ["AGENT_VERSION", "PROTOCOL_VERSION"]
