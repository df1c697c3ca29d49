"""Plain models: data and small invariants only. Rules live in app/services/."""
from app.models.audit import AuditEntry
from app.models.catalog import Environment, Project, ProjectSecret
from app.models.identity import ApiToken, LoginFailure, User
from app.models.nodes import Node, NodeCommand
from app.models.registries import Registry
from app.models.teams import AccessLevel, Grant, Team, TeamMember

__all__ = [
    "AccessLevel",
    "ApiToken",
    "AuditEntry",
    "Environment",
    "Grant",
    "LoginFailure",
    "Node",
    "NodeCommand",
    "Project",
    "ProjectSecret",
    "Registry",
    "Team",
    "TeamMember",
    "User",
]
