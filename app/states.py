"""State machines, written down once. Everything else asks here whether a change is allowed.

Node statuses (issue: controller and nodes):
  pending       added, never connected yet
  online        linked, trusted, compatible, heartbeats answered
  offline       not linked (unreachable, link lost, heartbeat missed); the controller retries
  untrusted     the agent's certificate changed; nothing is sent until an admin approves it
  incompatible  the agent's version differs from the control plane's; it gets no work
  disabled      an admin disabled it; no new deployments, existing ones keep running
  revoked       its token was revoked; reconnects are refused until a new token is issued
"""
from app.models.types import utcnow


class TransitionError(Exception):
    pass


NODE_STATUSES = ("pending", "online", "offline", "untrusted", "incompatible", "disabled", "revoked")
_LINK_OUTCOMES = {"online", "offline", "untrusted", "incompatible"}
NODE_TRANSITIONS = {
    "pending": _LINK_OUTCOMES | {"disabled", "revoked"},
    "online": {"offline", "untrusted", "incompatible", "disabled", "revoked"},
    "offline": _LINK_OUTCOMES | {"disabled", "revoked"},
    "untrusted": {"offline", "online", "disabled", "revoked"},  # online only after an approval
    "incompatible": _LINK_OUTCOMES | {"disabled", "revoked"},
    "disabled": {"pending", "revoked"},                          # enabling starts over
    "revoked": {"pending", "disabled"},                           # a new token starts over
}


def can_move_node(current, new):
    return new == current or new in NODE_TRANSITIONS.get(current, ())


def move_node(node, new, reason=""):
    """Change a node's status (the caller commits). Same status: only the reason changes.
    Returns True when the status changed."""
    if new not in NODE_STATUSES:
        raise TransitionError(f"unknown node status {new!r}")
    if not can_move_node(node.status, new):
        raise TransitionError(f"node {node.name} cannot go from {node.status} to {new}")
    changed = node.status != new
    node.status_reason = reason[:500]
    if changed:
        node.status = new
        node.status_changed_at = utcnow()
    return changed
