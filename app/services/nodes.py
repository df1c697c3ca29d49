"""Nodes: adding them, their tokens, trust in their certificates, enabling and disabling.

The web tier holds no agent links. What must reach a live link (a rotated token, a dropped link,
a reconnect after an approval) is left as a NodeCommand for the controller; everything else the
controller reads from the node row, level-triggered.

A node token is shown once and never stored. The control plane keeps only the token's verifier
(agent.protocol.verifier_for), encrypted under the master key: the handshake needs no more, and a
database dump alone cannot command an agent.
"""
import ipaddress
import json
import re
import secrets

from sqlalchemy import select

from agent.protocol import verifier_for
from app import __version__
from app.extensions import db
from app.models import Deployment, Node, NodeAgentSettings, NodeCommand
from app.models.nodes import AGENT_DEFAULTS
from app.models.types import utcnow
from app.services import audit, catalog
from app.services.catalog import keyring
from app.services.errors import Conflict, ValidationFailed
from app.services.names import DNS_LABEL_HINT, DNS_LABEL_PATTERN, check, check_host
from app.states import TransitionError, move_node

AGENT_IMAGE = "nullops/agent"
VERIFIER_CONTEXT = Node.__encrypted__["verifier_ciphertext"]
PAYLOAD_CONTEXT = NodeCommand.__encrypted__["payload_ciphertext"]
CPUS_RANGE = (0.1, 1024)
MEMORY_MB_RANGE = (64, 16 * 1024 * 1024)
CPU_OVERCOMMIT_RANGE = catalog.CPU_OVERCOMMIT_RANGE  # a node's own ratio: as environments'
MEMORY_RESERVE_MB_RANGE = (0, 1024 * 1024)
THUMBPRINT = re.compile(r"^[0-9a-f]{64}$")
AGENT_ENV_DIR = "/etc/nullops-agent"
DEFAULT_CONTAINER_NAME = AGENT_DEFAULTS["container_name"]
DEFAULT_DATA_DIR = AGENT_DEFAULTS["data_dir"]
# Shell-safe by construction: these go into the command shown on the node's page.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
DATA_DIR = re.compile(r"/[a-zA-Z0-9_./-]{0,254}")

# NodeCommand kinds the controller carries out.
ROTATE_TOKEN = "rotate_token"  # push the new verifier over the live link (payload: rotation_payload)
DROP_LINK = "drop_link"        # close the link now: the token was revoked
RECONNECT = "reconnect"        # close and dial again: a new thumbprint or a new address

# Statuses the controller keeps a link for: an enabled node's, and a disabled one's while it
# still holds deployments (draining). A disabled node with none is "disabled" and not dialled;
# set_enabled, rotate_token and settle_drained keep it so.
LINKED_STATUSES = ("pending", "online", "offline", "incompatible")
DISABLED = "disabled by an admin: no deployments on it, the controller does not connect"
DRAINING = ("disabled by an admin: no new deployments; the controller stays linked until the last "
            "one here is deleted, so they keep running and can be deleted")

TOKEN_SHOWN_ONCE = "Copy the token now: it is shown only once and NullOps does not store it."
ROTATED_MESSAGE = (
    "The agent receives the new token over its link: at once when it is online, else as soon as "
    "it is back (until then the old token still links that agent, and only with its pinned "
    "certificate, so an interrupted rotation cannot strand it). An agent on a new host or with "
    "a lost data directory needs the new token by hand (the command below)."
)
UNCHANGED = object()


# Services' secret files (agent/secret_files.py): a tmpfs folder of the host (/run is one on
# systemd hosts) at the same path inside the agent, because it is a bind mount's source.
AGENT_SECRETS_MOUNT = "/run/nullops-agent"


def agent_command(node):
    """The commands that start the agent on a node (spec: Agent Installation Process; issue 16.4).

    The token stays off every command line (process lists, shell history): the first command
    reads it from the terminal into an env file only root may read (0600), and `docker run`
    takes it from there. The container name, data directory and the address the port is bound
    to are the node's own, the same parameters the nullops_agent role takes.

    The agent runs in the host's network with NET_ADMIN (issue 17 item 1): its firewall rules
    must go into the host's tables, not a container's own. It listens on the bind address itself,
    and publishes service ports there too (the address the controller, and so Caddy, reaches)."""
    name, env_file = node.agent_container_name, agent_env_file(node)
    return (
        f"# 1. Store the token (paste it, then press Enter): it goes to {env_file} (mode 0600)\n"
        f"sudo sh -c 'umask 077 && mkdir -p {AGENT_ENV_DIR} && IFS= read -r t && "
        f"printf \"AGENT_TOKEN=%s\\n\" \"$t\" > {env_file}'\n"
        f"# 2. Start the agent\n"
        f"docker run -d --name {name} --restart unless-stopped --network host --cap-add NET_ADMIN "
        f"-e AGENT_HOST={node.agent_bind_address} -e AGENT_PORT={node.port} "
        f"--env-file {env_file} -v /var/run/docker.sock:/var/run/docker.sock "
        # The host's cgroups: each deployment's containers held together (docs/agent.md).
        f"-v /sys/fs/cgroup:/sys/fs/cgroup -v {node.agent_data_dir}:/data "
        f"-v {AGENT_SECRETS_MOUNT}:{AGENT_SECRETS_MOUNT} {AGENT_IMAGE}:{__version__}"
    )


def agent_env_file(node):
    return f"{AGENT_ENV_DIR}/{node.agent_container_name}.env"


def default_bind_address(host):
    """The address the agent's port is bound to unless an admin says otherwise: the address the
    node was added with when that is an IP address (issue 16.1), else every address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "0.0.0.0"
    return host


def _check_agent_parameters(container_name, data_dir, bind_address):
    fields = {}
    if not isinstance(container_name, str) or not CONTAINER_NAME.fullmatch(container_name):
        fields["agent_container_name"] = ("a Docker container name: letters, digits, '_', '.', '-', "
                                          "starting with a letter or digit, at most 128")
    if (not isinstance(data_dir, str) or not DATA_DIR.fullmatch(data_dir)
            or any(part in ("", ".", "..") for part in data_dir[1:].split("/")) or data_dir == "/"):
        fields["agent_data_dir"] = ("an absolute path of letters, digits, '_', '.', '-' and '/', "
                                    "without '.' or '..' parts, at most 255")
    try:
        bind_address = str(ipaddress.ip_address(bind_address))
    except ValueError:
        fields["agent_bind_address"] = "an IP address of the node (0.0.0.0 for every address)"
    if fields:
        field, hint = next(iter(fields.items()))
        raise ValidationFailed(f"{field} is invalid: use {hint}", fields)
    return container_name, data_dir, bind_address


def reveal_verifier(node):
    """For the controller's handshake only; never for a response, a log or an audit entry."""
    if node.verifier_ciphertext is None:
        return None
    return keyring().decrypt(node.verifier_ciphertext, VERIFIER_CONTEXT)


def _new_token():
    token = secrets.token_urlsafe(32)
    return token, verifier_for(token)


def _lock(node):
    """Re-read the row under a row lock: the controller changes status at the same time, and a
    decision taken on a stale status could undo its change (SQLite ignores the lock; it has
    one writer anyway)."""
    db.session.refresh(node, with_for_update=True)
    return node


def _move(node, status, reason):
    try:
        return move_node(node, status, reason)
    except TransitionError as exc:
        raise Conflict(f"{exc}; reload the node and try again", {"status": node.status}) from None


def rotation_payload(verifier, previous):
    """A rotation command's payload: the new verifier, and the one the agent is known to hold
    until the rotation reaches it. docs/protocol.md: the controller tries the new one, then the
    previous one, so a rotation a link drop cut short does not strand the node."""
    return json.dumps({"verifier": verifier, "previous": previous})


def read_rotation(payload):
    """(verifier, previous verifier or None) of a rotation command's payload (a bare verifier
    before rotations carried the previous one)."""
    if payload.startswith("{"):
        data = json.loads(payload)
        return data["verifier"], data.get("previous")
    return payload, None


def _queue(node, kind, payload=None):
    command = NodeCommand(node_id=node.id, kind=kind)
    if payload is not None:
        command.payload_ciphertext = keyring().encrypt(payload, PAYLOAD_CONTEXT)
    db.session.add(command)
    return command


def _check_name(environment, name, node_id=None):
    check("name", name, DNS_LABEL_PATTERN, DNS_LABEL_HINT)
    existing = db.session.scalar(
        select(Node).where(Node.environment_id == environment.id, Node.name == name)
    )
    if existing is not None and existing.id != node_id:
        raise Conflict(
            f"environment {environment.name!r} has a node named {name!r}; choose another name",
            {"name": "already taken"},
        )
    return name


def _check_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValidationFailed("port is invalid: use a whole number from 1 to 65535",
                               {"port": "use a whole number from 1 to 65535"})
    return port


def _check_override(field, value, low, high, integer):
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        hint = f"{what} from {low} to {high}, or null to use what the agent reports"
        raise ValidationFailed(f"{field} is invalid: use {hint}", {field: f"use {hint}"})
    return value if integer else float(value)


def _check_number(field, value, low, high, integer, none=None):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        hint = f"{'a whole number' if integer else 'a number'} from {low} to {high}"
        hint += f", or {none}" if none else ""
        raise ValidationFailed(f"{field} is invalid: use {hint}", {field: f"use {hint}"})
    return value if integer else float(value)


def add(actor, environment, name, host, port=5000, agent_container_name=DEFAULT_CONTAINER_NAME,
        agent_data_dir=DEFAULT_DATA_DIR, agent_bind_address=None, ssh_access=None, commit=True):
    """Returns (node, token, command); the token and the command are shown once. The bind
    address defaults to default_bind_address(host). With `ssh_access` (app/services/onboarding.py)
    the node starts "provisioning": the controller sets its host up before it dials it."""
    name = _check_name(environment, name)
    host = check_host("host", host)
    port = _check_port(port)
    agent_container_name, agent_data_dir, agent_bind_address = _check_agent_parameters(
        agent_container_name, agent_data_dir,
        default_bind_address(host) if agent_bind_address is None else agent_bind_address)
    token, verifier = _new_token()
    node = Node(
        environment_id=environment.id, name=name, host=host, port=port, enabled=True,
        agent_settings=NodeAgentSettings(container_name=agent_container_name, data_dir=agent_data_dir,
                                         bind_address=agent_bind_address),
        verifier_ciphertext=keyring().encrypt(verifier, VERIFIER_CONTEXT),
        status="pending", status_reason="waiting for the first connection to the agent",
    )
    if ssh_access is not None:
        node.ssh_access = ssh_access
        node.status, node.status_reason = "provisioning", "onboarding over SSH: waiting for the controller"
    db.session.add(node)
    db.session.flush()
    audit.record(actor, "node.create", "node", node,
                 {"environment": environment.name, "host": host, "port": port,
                  "agent_container_name": agent_container_name, "agent_data_dir": agent_data_dir,
                  "agent_bind_address": agent_bind_address, "over_ssh": ssh_access is not None})
    if commit:
        db.session.commit()
    return node, token, agent_command(node)


def rotate_token(actor, node):
    """A new token replaces the old one at once. Returns (node, token, command), shown once."""
    _lock(node)
    token, verifier = _new_token()
    # What the agent holds: today's verifier, or, when an earlier rotation has not reached it
    # yet, what that one fell back to (it is superseded: only the newest is pushed).
    previous = reveal_verifier(node)
    waiting = db.session.scalars(_waiting_rotations(node)).all()
    if waiting:
        previous = read_rotation(keyring().decrypt(waiting[0].payload_ciphertext, PAYLOAD_CONTEXT))[1]
    for command in waiting:
        command.done_at, command.result = utcnow(), "superseded by a newer rotation"
        command.payload_ciphertext = None
    node.verifier_ciphertext = keyring().encrypt(verifier, VERIFIER_CONTEXT)
    _queue(node, ROTATE_TOKEN, rotation_payload(verifier, previous))
    details = {}
    if node.status == "revoked":
        # A new token starts over: the controller dials again and proves the new token.
        if node.enabled or holds_deployments(node.id):
            _move(node, "pending", "new token issued; waiting for the agent to be started with it")
        else:
            _move(node, "disabled", DISABLED)
        details["status"] = ["revoked", node.status]
    audit.record(actor, "node.rotate_token", "node", node, details or None)
    db.session.commit()
    return node, token, agent_command(node)


def _waiting_rotations(node):
    """The node's rotations not pushed to its agent yet, oldest first."""
    return (select(NodeCommand).where(NodeCommand.node_id == node.id, NodeCommand.kind == ROTATE_TOKEN,
                                      NodeCommand.done_at.is_(None)).order_by(NodeCommand.id))


def revoke_token(actor, node):
    """Drop the link now and refuse reconnects until rotate_token issues a new token."""
    _lock(node)
    if node.status == "revoked" and node.verifier_ciphertext is None:
        return node
    node.verifier_ciphertext = None
    _move(node, "revoked", f"token revoked by {getattr(actor, 'username', None) or 'an admin'}; "
                           "issue a new token to reconnect")
    # A rotation still waiting would hand the agent a verifier for a token just revoked.
    for command in db.session.scalars(_waiting_rotations(node)):
        command.done_at = utcnow()
        command.result = "cancelled: the token was revoked"
    _queue(node, DROP_LINK)
    audit.record(actor, "node.revoke_token", "node", node)
    db.session.commit()
    return node


def status_reason_for(user, node):
    """The node's status reason as `user` may read it. Host, port and thumbprints are for those
    who may manage the node (NodeOut hides them from the others), yet connection errors name
    them ("connection refused at 10.0.0.5:5000"): for viewers they are replaced (issue 17
    item 5)."""
    from app import access  # the access module imports models only; imported late to stay so

    reason = node.status_reason or ""
    if access.can(user, "manage", node):
        return reason
    return hide_connection_details(reason, node)


def hide_connection_details(reason, node):
    replacements = []
    if node.host:
        if node.port:
            replacements += [(f"[{node.host}]:{node.port}", "the node's address"),
                             (f"{node.host}:{node.port}", "the node's address")]
        replacements.append((node.host, "the node's host"))
    replacements += [(t, "a certificate") for t in (node.thumbprint, node.pending_thumbprint) if t]
    for secret, shown in replacements:
        reason = reason.replace(secret, shown)
    return reason


def normalize_thumbprint(value):
    """Accept the thumbprint as the agent logs it, and also uppercase or colon-separated."""
    cleaned = value.replace(":", "").strip().lower() if isinstance(value, str) else ""
    if not THUMBPRINT.fullmatch(cleaned):
        raise ValidationFailed(
            "thumbprint is invalid: use the 64 hex digits of the agent's log line "
            "'certificate thumbprint sha256: ...'",
            {"thumbprint": "use the 64 hex digits the agent logs at start"},
        )
    return cleaned


def approve_thumbprint(actor, node, thumbprint):
    """Pin the certificate an untrusted node presented, after the admin compared it with the
    agent's log. The thumbprint must be given, not just confirmed: approving whatever is pending
    would let an impostor's certificate through on one careless click."""
    thumbprint = normalize_thumbprint(thumbprint)
    _lock(node)
    if node.status != "untrusted" or node.pending_thumbprint is None:
        raise Conflict(
            f"node {node.name} has no certificate waiting for approval (status {node.status})",
            {"thumbprint": "nothing to approve"},
        )
    if thumbprint != node.pending_thumbprint:
        raise Conflict(
            f"the thumbprint does not match the certificate node {node.name} presented; compare "
            "it again with the agent's log line and do not approve if they differ",
            {"thumbprint": "does not match the pending thumbprint"},
        )
    old = node.thumbprint
    node.thumbprint, node.pending_thumbprint = thumbprint, None
    _move(node, "offline", "approved; reconnecting")
    _queue(node, RECONNECT)
    audit.record(actor, "node.approve_thumbprint", "node", node,
                 {"old_thumbprint": old, "new_thumbprint": thumbprint})
    db.session.commit()
    return node


def set_enabled(actor, node, enabled):
    """Disabling stops new deployments on the node (graceful decommissioning, the spec): the
    ones there keep running, routed and deletable, because the link stays until the last is
    deleted (settle_drained). Enabling a drained node starts over at pending: the controller
    connects and decides the status."""
    _lock(node)
    if node.enabled == bool(enabled):
        return node
    node.enabled = bool(enabled)
    # A revoked node stays revoked either way: only a new token lets it back in.
    if node.status != "revoked":
        if enabled and node.status == "disabled":
            _move(node, "pending", "enabled; waiting for the controller to connect")
        elif enabled:
            _move(node, node.status, "enabled")
        elif holds_deployments(node.id):
            _move(node, node.status, DRAINING)
        else:
            _move(node, "disabled", DISABLED)
    audit.record(actor, "node.enable" if enabled else "node.disable", "node", node)
    db.session.commit()
    return node


# Whether any deployment on the node is not deleted yet (failed ones included: their rows and
# whatever the agent still has are the node's until they are deleted), as a condition on nodes.
HOLDS_DEPLOYMENTS = select(Deployment.id).where(
    Deployment.node_id == Node.id, Deployment.deleted_at.is_(None)).exists()


def holds_deployments(node_id):
    return db.session.scalar(select(HOLDS_DEPLOYMENTS).where(Node.id == node_id))


def settle_drained(node_id):
    """After a deployment on the node is deleted: a disabled node that holds no more becomes
    "disabled", and the controller drops its link. The caller commits."""
    node = db.session.get(Node, node_id)
    if (node is not None and not node.enabled and node.status not in ("disabled", "revoked")
            and not holds_deployments(node_id)):
        _move(node, "disabled", DISABLED)


def update(actor, node, host=None, port=None, cpus_override=UNCHANGED, memory_mb_override=UNCHANGED,
           cpu_overcommit=UNCHANGED, memory_reserve_mb=None):
    """None leaves host, port and memory_reserve_mb as they are; an override of None clears it
    (back to what the agent reports; for cpu_overcommit, to the environment's ratio),
    UNCHANGED leaves it."""
    _lock(node)
    changes = {}
    if host is not None:
        host = check_host("host", host)
        if host != node.host:
            changes["host"] = [node.host, host]
    if port is not None:
        port = _check_port(port)
        if port != node.port:
            changes["port"] = [node.port, port]
    if cpus_override is not UNCHANGED:
        cpus_override = _check_override("cpus_override", cpus_override, *CPUS_RANGE, integer=False)
        if cpus_override != node.cpus_override:
            changes["cpus_override"] = [node.cpus_override, cpus_override]
    if memory_mb_override is not UNCHANGED:
        memory_mb_override = _check_override("memory_mb_override", memory_mb_override,
                                             *MEMORY_MB_RANGE, integer=True)
        if memory_mb_override != node.memory_mb_override:
            changes["memory_mb_override"] = [node.memory_mb_override, memory_mb_override]
    if cpu_overcommit is not UNCHANGED:
        if cpu_overcommit is not None:
            cpu_overcommit = _check_number("cpu_overcommit", cpu_overcommit, *CPU_OVERCOMMIT_RANGE,
                                           integer=False, none="null to use the environment's ratio")
        if cpu_overcommit != node.cpu_overcommit:
            changes["cpu_overcommit"] = [node.cpu_overcommit, cpu_overcommit]
    if memory_reserve_mb is not None:
        memory_reserve_mb = _check_number("memory_reserve_mb", memory_reserve_mb,
                                          *MEMORY_RESERVE_MB_RANGE, integer=True)
        if memory_reserve_mb != node.memory_reserve_mb:
            changes["memory_reserve_mb"] = [node.memory_reserve_mb, memory_reserve_mb]
    for key, (_old, new) in changes.items():
        setattr(node, key, new)
    if changes.keys() & {"host", "port"}:
        # The link goes to the old address; the agent at the new one must prove the token, and a
        # different certificate there makes the node untrusted like any other change.
        _queue(node, RECONNECT)
    if changes:
        audit.record(actor, "node.update", "node", node, changes)
    db.session.commit()
    return node


def delete(actor, node, force=False):
    """Delete a node and its queued commands; the controller drops its link when the row is
    gone. Refused while deployments are left on it: removing the node would leave their
    containers on the host unchecked, the leak NullOps exists to prevent. `force` is for a host
    that is gone for good: its deployments are recorded as deleted without a check."""
    _lock(node)
    left = db.session.scalars(select(Deployment.name).where(
        Deployment.node_id == node.id, Deployment.deleted_at.is_(None)).order_by(Deployment.name)).all()
    if left and not force:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise Conflict(
            f"node {node.name} still holds {len(left)} deployment{'s' if len(left) > 1 else ''} "
            f"({shown}): delete them first and wait until they are gone (disable the node so no new "
            "ones arrive); if its host is gone for good, delete the node with force, which records "
            "them as deleted without checking the host",
            {"deployments": f"{len(left)} left on the node"})
    details = {"environment": node.environment.name}
    if left:
        # Imported here: app.services.deployments reaches the controller's modules (live data),
        # and they import this one.
        from app.services.deployments import forget_on_removed_node

        forget_on_removed_node(actor, node)
        details["deployments_left"] = left
    audit.record(actor, "node.delete", "node", node, details)
    db.session.delete(node)
    db.session.commit()
