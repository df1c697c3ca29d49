"""Labels on every Docker object an agent creates: cleanup finds objects only through these."""
PREFIX = "org.nullops"
NODE = f"{PREFIX}.node"              # the agent's node id: agents sharing an engine never mix
DEPLOYMENT = f"{PREFIX}.deployment"  # the deployment id
ROLE = f"{PREFIX}.role"              # "service", "plugin" or "network"
STEP = f"{PREFIX}.step"              # the pipeline step id
RUN = f"{PREFIX}.run"                # the run that created it
CONFIG_HASH = f"{PREFIX}.config-hash"  # decides reuse versus recreate of a service container
SUBNET = f"{PREFIX}.subnet"          # the subnet a deployment network holds from the pool

ROLE_SERVICE = "service"
ROLE_PLUGIN = "plugin"
ROLE_NETWORK = "network"


def for_node(node_id):
    return [f"{NODE}={node_id}"]


def for_deployment(node_id, deployment_id):
    return [f"{NODE}={node_id}", f"{DEPLOYMENT}={deployment_id}"]
