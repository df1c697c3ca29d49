"""Nodes the control plane sets up itself over SSH (issue 16): add with "provision over SSH",
retry a failed onboarding, upgrade the agents of an environment, decommission a node; and what
the end of each run means for its node. The runs themselves: app/services/provisioning.py.

A provisioned node links like any other (item 5): its token is generated here and handed to the
run (encrypted on the run row until it ends, never shown), the agent's certificate thumbprint is
pinned at the first contact after the run.
"""
from sqlalchemy import select, update

from app import __version__
from app.extensions import db
from app.models import Deployment, Node, NodeSshAccess, ProvisioningRun
from app.models.types import utcnow
from app.services import audit, nodes, provisioning
from app.services.catalog import keyring
from app.services.errors import Conflict, ValidationFailed
from app.services.names import check_host

SSH_USER_MAX = 64
SECRET_MAX = 16 * 1024


def _check_ssh(ssh):
    """{host, port, user, private_key | password, become} as given by an admin."""
    if not isinstance(ssh, dict):
        raise ValidationFailed("ssh is invalid: give host, user and a private key or password",
                               {"ssh": "missing"})
    host = check_host("ssh.host", ssh.get("host"))
    port = ssh.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValidationFailed("ssh.port is invalid: use a whole number from 1 to 65535",
                               {"ssh.port": "1-65535"})
    user = ssh.get("user")
    if not isinstance(user, str) or not user or len(user) > SSH_USER_MAX or not user.replace("-", "").replace(
            "_", "").replace(".", "").isalnum():
        raise ValidationFailed("ssh.user is invalid: a user name of letters, digits, '-', '_', '.'",
                               {"ssh.user": "a user name"})
    key, password = ssh.get("private_key") or None, ssh.get("password") or None
    if (key is None) == (password is None):
        raise ValidationFailed("give either ssh.private_key or ssh.password",
                               {"ssh.private_key": "one of the two", "ssh.password": "one of the two"})
    for field, value in (("ssh.private_key", key), ("ssh.password", password)):
        if value is not None and (not isinstance(value, str) or len(value) > SECRET_MAX):
            raise ValidationFailed(f"{field} is invalid: a string of at most 16 KiB", {field: "too long"})
    if key is not None and "PRIVATE KEY-----" not in key:
        raise ValidationFailed("ssh.private_key is invalid: paste the whole key, BEGIN and END lines "
                               "included", {"ssh.private_key": "not a private key"})
    become = ssh.get("become", True)
    if not isinstance(become, bool):
        raise ValidationFailed("ssh.become is invalid: true or false", {"ssh.become": "true or false"})
    access = NodeSshAccess(host=host, port=port, user=user, become=become)
    if key is not None:
        access.private_key_ciphertext = keyring().encrypt(key, provisioning.SSH_PRIVATE_KEY_CONTEXT)
    if password is not None:
        access.password_ciphertext = keyring().encrypt(password, provisioning.SSH_PASSWORD_CONTEXT)
    return access


def add_over_ssh(actor, environment, name, host, port, ssh, **agent):
    """Add a node and have the controller onboard it (docker_engine, nullops_agent). Returns
    (node, run); the token goes to the run only."""
    node, token, _command = nodes.add(actor, environment, name, host, port, ssh_access=_check_ssh(ssh),
                                      commit=False, **agent)
    run = provisioning.request(actor, node, "onboard_node", secrets={"nullops_agent_token": token},
                               agent_version=__version__)
    db.session.commit()
    return node, run


def retry(actor, node):
    """Onboard a node whose onboarding failed again: a new token (the old one was never kept),
    a new run."""
    nodes._lock(node)
    if node.status != "provision_failed" or node.ssh_access is None:
        raise Conflict(f"node {node.name} is {node.status}: only a failed onboarding is retried",
                       {"status": node.status})
    token, verifier = nodes._new_token()
    node.verifier_ciphertext = keyring().encrypt(verifier, nodes.VERIFIER_CONTEXT)
    nodes._move(node, "provisioning", "onboarding over SSH again: waiting for the controller to run it")
    run = provisioning.request(actor, node, "onboard_node", secrets={"nullops_agent_token": token},
                               agent_version=__version__)
    db.session.commit()
    return run


def upgrade_agents(actor, environment):
    """A run of upgrade_agents for every node of the environment the control plane reaches over
    SSH, to the control plane's version; the controller runs them a batch at a time. Nodes with
    a run going on are skipped (reported in the answer)."""
    runs, skipped = [], []
    candidates = db.session.scalars(select(Node).join(NodeSshAccess).where(
        Node.environment_id == environment.id).order_by(Node.name)).all()
    for node in candidates:
        if node.status in ("provisioning", "provision_failed", "revoked"):
            skipped.append({"node": node.name, "reason": f"{node.status}: not onboarded"})
            continue
        if provisioning.active_run(node) is not None:
            skipped.append({"node": node.name, "reason": "a run is going on"})
            continue
        runs.append(provisioning.request(actor, node, "upgrade_agents", agent_version=__version__))
    db.session.commit()
    return runs, skipped


def decommission(actor, node):
    """Remove the agent and everything it made from the node's host, then the node. Refused
    while deployments are left on it, as delete is."""
    if node.ssh_access is None:
        raise Conflict(f"node {node.name} was not added with SSH access: stop its agent by hand and "
                       "delete it", {"ssh": "none"})
    left = db.session.scalar(select(Deployment.id).where(Deployment.node_id == node.id,
                                                         Deployment.deleted_at.is_(None)).limit(1))
    if left is not None:
        raise Conflict(f"node {node.name} still holds deployments: delete them first (disable the node "
                       "so no new ones arrive)", {"deployments": "left on the node"})
    run = provisioning.request(actor, node, "decommission_node")
    db.session.commit()
    return run


# --- the controller's side ---------------------------------------------------------------------
def claim_next():
    """The id of the oldest pending run, now running, or None. The conditional update makes the
    claim safe against a second controller process."""
    run_id = db.session.scalar(select(ProvisioningRun.id).where(ProvisioningRun.status == "pending")
                               .order_by(ProvisioningRun.id).limit(1))
    if run_id is None:
        db.session.commit()
        return None
    claimed = db.session.execute(update(ProvisioningRun).where(
        ProvisioningRun.id == run_id, ProvisioningRun.status == "pending",
        ProvisioningRun.cancel_requested.is_(False)).values(status="running", started_at=utcnow()))
    if claimed.rowcount == 0:
        # Taken by another process, or cancelled before it started.
        db.session.execute(update(ProvisioningRun).where(
            ProvisioningRun.id == run_id, ProvisioningRun.status == "pending").values(
            status="canceled", finished_at=utcnow(), message="canceled before it started",
            secrets_ciphertext=None))
    db.session.commit()
    return run_id if claimed.rowcount else None


def recover_interrupted():
    """Runs a controller left running when it stopped cannot be resumed: they end as failed, so
    their nodes are not blocked for good."""
    runs = db.session.scalars(select(ProvisioningRun).where(ProvisioningRun.status == "running")).all()
    for run in runs:
        run.status, run.finished_at, run.secrets_ciphertext = "failed", utcnow(), None
        run.message = "the controller stopped during the run; run it again"
        if run.node is not None:
            finish(run, commit=False)
    db.session.commit()


def finish(run, commit=True):
    """What the end of a run means for its node."""
    node = run.node
    if node is None:
        return
    if run.playbook == "onboard_node":
        if run.status == "successful":
            nodes._move(node, "pending", "onboarded over SSH; waiting for the first connection to the agent")
        elif node.status == "provisioning":
            what = f"at task '{run.failed_task}'" if run.failed_task else f"({run.status})"
            nodes._move(node, "provision_failed", f"provisioning failed {what}: {run.message}")
    elif run.playbook == "decommission_node" and run.status == "successful":
        audit.record(None, "node.decommissioned", "node", node, {"run": run.id})
        db.session.delete(node)
    if commit:
        db.session.commit()


def work_once(timeout_s=provisioning.DEFAULT_TIMEOUT_S, extra_envvars=None):
    """Take one pending run, carry it out, apply its end to its node. Returns the run or None."""
    run_id = claim_next()
    if run_id is None:
        return None
    return provisioning.execute(run_id, timeout_s=timeout_s, extra_envvars=extra_envvars,
                                on_end=lambda run: finish(run, commit=False))
