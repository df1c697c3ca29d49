"""Plain models: data and small invariants only. Rules live in app/services/."""
from app.models.audit import AuditEntry
from app.models.catalog import Environment, Plugin, Project, ProjectSecret, Service
from app.models.controller import ControllerEndpoint
from app.models.deployments import Deployment, DeploymentEvent, DeploymentSpec
from app.models.identity import SCOPES, ApiToken, LoginFailure, User
from app.models.nodes import Node, NodeAgentSettings, NodeCommand, NodeOutbox
from app.models.pipelines import PipelineVersion
from app.models.provisioning import NodeSshAccess, ProvisioningEvent, ProvisioningRun
from app.models.registries import Registry
from app.models.teams import AccessLevel, Grant, Team, TeamMember

__all__ = [
    "SCOPES",
    "AccessLevel",
    "ApiToken",
    "AuditEntry",
    "ControllerEndpoint",
    "Deployment",
    "DeploymentEvent",
    "DeploymentSpec",
    "Environment",
    "Grant",
    "LoginFailure",
    "Node",
    "NodeAgentSettings",
    "NodeCommand",
    "NodeOutbox",
    "NodeSshAccess",
    "PipelineVersion",
    "Plugin",
    "Project",
    "ProvisioningEvent",
    "ProvisioningRun",
    "ProjectSecret",
    "Registry",
    "Service",
    "Team",
    "TeamMember",
    "User",
]
