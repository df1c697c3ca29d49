"""State machines, written down once. Everything else asks here whether a change is allowed.

Node statuses (issue: controller and nodes):
  pending       added, never connected yet
  online        linked, trusted, compatible, heartbeats answered
  offline       not linked (unreachable, link lost, heartbeat missed); the controller retries
  untrusted     the agent's certificate changed; nothing is sent until an admin approves it
  incompatible  the agent's version differs from the control plane's; it gets no work
  disabled      an admin disabled it and nothing is left on it: no link. While deployments
                are left, a disabled node (enabled false) keeps its link status and its link,
                so they keep running and can be deleted (app/services/nodes.py)
  revoked       its token was revoked; reconnects are refused until a new token is issued
  provisioning  added with "provision over SSH": the controller runs the onboarding playbook;
                no link until it succeeds (then pending)
  provision_failed  the onboarding run failed; the reason names the failing task and Ansible's
                message; a retry starts a new run

Deployment statuses (issue: catalog and deployment lifecycle):
  pending         admitted and placed; the controller has not yet handed it to the agent
  deploying       the agent runs its pipeline
  ready           every step done, services running
  degraded        a service stopped; the agent restarts it (back to ready when healed)
  failed          the pipeline failed or was refused; the agent rolled everything back
  offline         its node's link is lost; not reachable, not migrated (the spec)
  deleting        delete or cancel requested; the agent removes it, then the controller checks
                  that nothing with its labels is left
  cleanup_failed  removal failed or left something behind; shown as such and retried
  deleted         removed and checked; the row stays for the history
"""
from app.models.types import utcnow


class TransitionError(Exception):
    pass


NODE_STATUSES = ("pending", "online", "offline", "untrusted", "incompatible", "disabled", "revoked",
                 "provisioning", "provision_failed")
_LINK_OUTCOMES = {"online", "offline", "untrusted", "incompatible"}
NODE_TRANSITIONS = {
    "pending": _LINK_OUTCOMES | {"disabled", "revoked"},
    "online": {"offline", "untrusted", "incompatible", "disabled", "revoked"},
    "offline": _LINK_OUTCOMES | {"disabled", "revoked"},
    "untrusted": {"offline", "online", "disabled", "revoked"},  # online only after an approval
    "incompatible": _LINK_OUTCOMES | {"disabled", "revoked"},
    "disabled": {"pending", "revoked"},                          # enabling starts over
    "revoked": {"pending", "disabled"},                           # a new token starts over
    "provisioning": {"pending", "provision_failed", "revoked"},  # pending: the agent runs now
    "provision_failed": {"provisioning", "revoked"},              # a retry is a new run
}

# Provisioning runs (app/services/provisioning.py): pending until the controller takes one,
# running while Ansible runs, then one of the ends.
RUN_STATUSES = ("pending", "running", "successful", "failed", "canceled", "timeout")
RUN_TRANSITIONS = {
    "pending": {"running", "failed", "canceled"},
    "running": {"successful", "failed", "canceled", "timeout"},
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


DEPLOYMENT_STATUSES = ("pending", "deploying", "ready", "degraded", "failed", "offline", "deleting",
                       "cleanup_failed", "deleted")
# Live: holds resources on its node and counts for admission. Every status but deleted, so
# queries may say `deleted_at IS NULL` (a constraint ties it to the status; indexes use it).
LIVE_DEPLOYMENT_STATUSES = ("pending", "deploying", "ready", "degraded", "failed", "offline",
                            "deleting", "cleanup_failed")
DEPLOYMENT_TRANSITIONS = {
    "pending": {"deploying", "ready", "failed", "offline", "deleting"},
    "deploying": {"ready", "failed", "degraded", "offline", "deleting"},
    "ready": {"deploying", "degraded", "failed", "offline", "deleting"},
    "degraded": {"ready", "deploying", "failed", "offline", "deleting"},
    "failed": {"pending", "deleting"},                      # pending: a retry
    "offline": {"pending", "deploying", "ready", "degraded", "failed", "deleting"},
    "deleting": {"deleted", "cleanup_failed"},
    "cleanup_failed": {"deleting", "deleted"},
    "deleted": set(),
}


def can_move_deployment(current, new):
    return new == current or new in DEPLOYMENT_TRANSITIONS.get(current, ())


def move_deployment(deployment, new, message=""):
    """Change a deployment's status (the caller commits and records the event).
    Same status: only the message changes. Returns True when the status changed."""
    if new not in DEPLOYMENT_STATUSES:
        raise TransitionError(f"unknown deployment status {new!r}")
    if not can_move_deployment(deployment.status, new):
        raise TransitionError(f"deployment {deployment.name} cannot go from {deployment.status} to {new}")
    changed = deployment.status != new
    deployment.status_message = (message or "")[:1000]
    if changed:
        deployment.status = new
        deployment.status_changed_at = utcnow()
        if new == "deleted":  # the two go together (a constraint says so): "live" is indexed by it
            deployment.deleted_at = deployment.status_changed_at
    return changed
