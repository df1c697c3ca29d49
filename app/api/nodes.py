"""Nodes of an environment: add (token shown once), tokens, certificate trust, enable/disable."""
from flask_login import current_user
from sqlalchemy import select

from app import access
from app.api.core import operation, paginate
from app.api.schemas import (
    NODE_MANAGER_FIELDS,
    NodeAllocation,
    NodeCreate,
    NodeDeleteQuery,
    NodeOut,
    NodeProvision,
    NodeProvisioned,
    NodeUpdate,
    NodeWithToken,
    Page,
    Pagination,
    ProvisioningEventOut,
    ProvisioningEventsQuery,
    ProvisioningRunEvents,
    ProvisioningRunOut,
    ThumbprintApproval,
    UpgradeAgentsOut,
)
from app.extensions import db
from app.models import Environment, Node, ProvisioningEvent, ProvisioningRun
from app.services import admission, nodes, onboarding, provisioning
from app.services.nodes import UNCHANGED

TAG = "nodes"


def _actor():
    return current_user._get_current_object()


def node_out(node, user):
    """The node as `user` may see it: connection details only for those who may manage it."""
    data = {
        column: getattr(node, column)
        for column in NodeOut.model_fields if column != "capacity"
    }
    data["capacity"] = {
        "cpus": node.capacity_cpus, "memory_mb": node.capacity_memory_mb,
        "reported_cpus": node.reported_cpus, "reported_memory_mb": node.reported_memory_mb,
        "cpus_override": node.cpus_override, "memory_mb_override": node.memory_mb_override,
        "cpu_overcommit": node.cpu_overcommit, "memory_reserve_mb": node.memory_reserve_mb,
    }
    hidden = set() if access.can(user, "manage", node) else NODE_MANAGER_FIELDS
    data["status_reason"] = nodes.status_reason_for(user, node)
    return NodeOut.model_validate(data).model_dump(mode="json", exclude=hidden)


def _with_token(node, token, command, message):
    return {**node_out(node, current_user), "token": token, "command": command, "message": message}


def _node(node_id, action="manage"):
    node = access.get_visible(current_user, Node, node_id, "node")
    access.require(current_user, action, node)
    return node


@operation("GET", "/environments/<int:environment_id>/nodes", summary="An environment's nodes",
           tag=TAG, query=Pagination, response=Page[NodeOut])
def list_nodes(environment_id, params):
    environment = access.get_visible(current_user, Environment, environment_id, "environment")
    stmt = access.visible(current_user, Node).where(Node.environment_id == environment.id)
    return paginate(stmt.order_by(Node.name), params, shape=lambda node: node_out(node, current_user))


@operation("POST", "/environments/<int:environment_id>/nodes",
           summary="Add a node; its token and the docker run command are shown only once",
           tag=TAG, body=NodeCreate, response=NodeWithToken, status=201)
def create_node(environment_id, data):
    environment = access.get_visible(current_user, Environment, environment_id, "environment")
    access.require(current_user, "create", Node)
    node, token, command = nodes.add(_actor(), environment, data.name, data.host, data.port,
                                     agent_container_name=data.agent_container_name,
                                     agent_data_dir=data.agent_data_dir,
                                     agent_bind_address=data.agent_bind_address)
    return _with_token(node, token, command, nodes.TOKEN_SHOWN_ONCE)


@operation("GET", "/nodes/<int:node_id>", summary="One node", tag=TAG, response=NodeOut)
def get_node(node_id):
    return node_out(_node(node_id, "view"), current_user)


@operation("GET", "/nodes/<int:node_id>/allocation",
           summary="What a node holds against what it may hold, its real use, and each deployment's "
                   "reservation", tag=TAG, response=NodeAllocation)
def get_node_allocation(node_id):
    return admission.allocation(_node(node_id, "view"), current_user)


@operation("PATCH", "/nodes/<int:node_id>",
           summary="Change a node's address, capacity overrides, CPU overcommit ratio or memory "
                   "reserve (null clears an override)",
           tag=TAG, body=NodeUpdate, response=NodeOut)
def update_node(node_id, data):
    node = _node(node_id)
    given = data.model_fields_set
    nodes.update(
        _actor(), node, host=data.host, port=data.port,
        cpus_override=data.cpus_override if "cpus_override" in given else UNCHANGED,
        memory_mb_override=data.memory_mb_override if "memory_mb_override" in given else UNCHANGED,
        cpu_overcommit=data.cpu_overcommit if "cpu_overcommit" in given else UNCHANGED,
        memory_reserve_mb=data.memory_reserve_mb,
    )
    return node_out(node, current_user)


@operation("DELETE", "/nodes/<int:node_id>", summary="Delete a node (409 while deployments are left "
           "on it, unless force)", tag=TAG, query=NodeDeleteQuery, status=204)
def delete_node(node_id, params):
    nodes.delete(_actor(), _node(node_id), force=params.force)


@operation("POST", "/nodes/<int:node_id>/rotate-token",
           summary="Issue a new token (shown only once); the old one stops working at once",
           tag=TAG, response=NodeWithToken)
def rotate_node_token(node_id):
    node, token, command = nodes.rotate_token(_actor(), _node(node_id))
    return _with_token(node, token, command, nodes.ROTATED_MESSAGE)


@operation("POST", "/nodes/<int:node_id>/revoke-token",
           summary="Revoke the token: the link drops, reconnects are refused until a new token",
           tag=TAG, response=NodeOut)
def revoke_node_token(node_id):
    return node_out(nodes.revoke_token(_actor(), _node(node_id)), current_user)


@operation("POST", "/nodes/<int:node_id>/approve-thumbprint",
           summary="Trust the changed certificate of an untrusted node (give its thumbprint)",
           tag=TAG, body=ThumbprintApproval, response=NodeOut)
def approve_node_thumbprint(node_id, data):
    return node_out(nodes.approve_thumbprint(_actor(), _node(node_id), data.thumbprint), current_user)


@operation("POST", "/nodes/<int:node_id>/enable", summary="Enable a node", tag=TAG, response=NodeOut)
def enable_node(node_id):
    return node_out(nodes.set_enabled(_actor(), _node(node_id), True), current_user)


@operation("POST", "/nodes/<int:node_id>/disable",
           summary="Disable a node: no new deployments there; existing ones keep running",
           tag=TAG, response=NodeOut)
def disable_node(node_id):
    return node_out(nodes.set_enabled(_actor(), _node(node_id), False), current_user)


# --- provisioning over SSH (issue 16) -----------------------------------------------------------
def _run_out(run):
    return ProvisioningRunOut.model_validate(run).model_dump(mode="json")


def _run(run_id):
    # Runs are admin business (no rule grants them to anyone else): others get a 404.
    return access.get_visible(current_user, ProvisioningRun, run_id, "provisioning run")


@operation("POST", "/environments/<int:environment_id>/nodes/provision",
           summary="Add a node and have the controller onboard it over SSH (Docker Engine, the agent)",
           tag=TAG, body=NodeProvision, response=NodeProvisioned, status=201)
def provision_node(environment_id, data):
    environment = access.get_visible(current_user, Environment, environment_id, "environment")
    access.require(current_user, "create", Node)
    node, run = onboarding.add_over_ssh(
        _actor(), environment, data.name, data.host, data.port, data.ssh.model_dump(),
        agent_container_name=data.agent_container_name, agent_data_dir=data.agent_data_dir,
        agent_bind_address=data.agent_bind_address)
    return {**node_out(node, current_user), "run": _run_out(run)}


@operation("POST", "/nodes/<int:node_id>/provision/retry",
           summary="Onboard a node whose onboarding failed again (a new token, a new run)",
           tag=TAG, response=ProvisioningRunOut, status=201)
def retry_provisioning(node_id):
    return _run_out(onboarding.retry(_actor(), _node(node_id)))


@operation("POST", "/nodes/<int:node_id>/decommission",
           summary="Remove the agent and everything it made from the node's host, then the node",
           tag=TAG, response=ProvisioningRunOut, status=201)
def decommission_node(node_id):
    return _run_out(onboarding.decommission(_actor(), _node(node_id)))


@operation("POST", "/environments/<int:environment_id>/upgrade-agents",
           summary="Upgrade the agent of every node reached over SSH to the control plane's version",
           tag=TAG, response=UpgradeAgentsOut, status=201)
def upgrade_agents(environment_id):
    environment = access.get_visible(current_user, Environment, environment_id, "environment")
    access.require_admin(current_user, "upgrade agents")
    runs, skipped = onboarding.upgrade_agents(_actor(), environment)
    return {"runs": [_run_out(run) for run in runs], "skipped": skipped}


@operation("GET", "/nodes/<int:node_id>/provisioning-runs",
           summary="A node's provisioning runs, newest first", tag=TAG, query=Pagination,
           response=Page[ProvisioningRunOut])
def list_provisioning_runs(node_id, params):
    node = _node(node_id)
    stmt = access.visible(current_user, ProvisioningRun).where(ProvisioningRun.node_id == node.id)
    return paginate(stmt.order_by(ProvisioningRun.id.desc()), params, shape=_run_out)


@operation("GET", "/provisioning-runs/<int:run_id>", summary="A run with its events (secrets redacted)",
           tag=TAG, query=ProvisioningEventsQuery, response=ProvisioningRunEvents)
def get_provisioning_run(run_id, params):
    run = _run(run_id)
    events = db.session.scalars(select(ProvisioningEvent).where(
        ProvisioningEvent.run_id == run.id, ProvisioningEvent.counter > params.after)
        .order_by(ProvisioningEvent.counter).limit(1000)).all()
    return {"run": _run_out(run),
            "events": [ProvisioningEventOut.model_validate(e).model_dump(mode="json") for e in events]}


@operation("POST", "/provisioning-runs/<int:run_id>/cancel", summary="Cancel a run that has not ended",
           tag=TAG, response=ProvisioningRunOut)
def cancel_provisioning_run(run_id):
    return _run_out(provisioning.cancel(_actor(), _run(run_id)))
