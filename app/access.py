"""The one place that decides whether a user may do an action on an object.

Every API route, page and WebSocket asks `can(user, action, obj)`; lists go through
`visible(user, Model)`. Objects a user may not see must look as if they did not exist, so
callers use `get_visible()` / `require()` which raise NotFound for those (never Forbidden).

Actions:
  view    read the object (and, for projects and environments, their deployments, logs, metrics;
          for environments, their nodes' status and capacity)
  deploy  create, change and delete deployments in a project or environment (Full Access)
  manage  change the object itself (admins; users manage their own tokens)
  create  make a new object of a model class (admins, except a user's own tokens)

Deployments belong to a project and an environment; a user's level on a deployment is the
stronger of their levels on the two. Creating one (`can_deploy_to`) needs Full Access on
either and sight of both, so nobody deploys into an environment they cannot see.

API tokens carry a scope (read-only, deploy, admin; issue 17 item 3) that narrows what their
user may do, never widens it. The scope is checked here and only here: `can()` and the deploy
checks refuse an action the request's token scope does not cover (`_ACTION_SCOPE`), and the API
asks `require_scope()` for every operation before its view runs (app/api/core.py), so a
read-only token cannot change a password through a route that needs no object.

A user's grants are read once per request (one small query) and kept in `flask.g`: a create
asks about the same project and environment five times, a list filters by all of them. A
flush that touches a team, a membership or a grant drops what was kept.
"""
import functools

from flask import g, has_request_context
from sqlalchemy import Integer, any_, bindparam, event, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import (
    SCOPES,
    AccessLevel,
    ApiToken,
    AuditEntry,
    Deployment,
    DeploymentEvent,
    Environment,
    Grant,
    Node,
    NodeCommand,
    PipelineVersion,
    Plugin,
    Project,
    ProjectSecret,
    ProvisioningRun,
    Registry,
    Service,
    Team,
    TeamMember,
    User,
)
from app.services.errors import Forbidden, NotFound

ACTIONS = ("view", "deploy", "manage", "create")
# The narrowest token scope that allows an action.
_ACTION_SCOPE = {"view": "read-only", "deploy": "deploy", "manage": "admin", "create": "admin"}


def scope_covers(held, needed):
    """Does a token of scope `held` allow what scope `needed` allows?"""
    return SCOPES.index(held) >= SCOPES.index(needed)


def request_scope():
    """The scope of the API token this request came with; None for a session (no narrowing)."""
    return g.get("token_scope") if has_request_context() else None


def _scope_allows(action):
    scope = request_scope()
    return scope is None or scope_covers(scope, _ACTION_SCOPE[action])


def require_scope(needed, what="do this"):
    """Refuse unless the request's token scope covers `needed` (a session always does)."""
    scope = request_scope()
    if scope is not None and not scope_covers(scope, needed):
        raise Forbidden(f"this token's scope is {scope}; to {what} use a token of scope {needed} "
                        "or wider")


def _is_admin(user):
    return bool(user is not None and getattr(user, "is_authenticated", False) and user.is_admin)


def _is_user(user):
    return bool(user is not None and getattr(user, "is_authenticated", False) and user.is_active)


def _unproxied(user):
    """The user behind Flask-Login's `current_user`: every attribute read through that proxy
    resolves it again, and a rule reads several (a page asks `can` once per row)."""
    resolve = getattr(user, "_get_current_object", None)
    return resolve() if resolve is not None else user


_MEMO = "access_grants"
_LEVELS = {level.value: level for level in AccessLevel}


@functools.cache
def _grants_of_user():
    """Built once: every API call asks it, and building a statement costs more than running it."""
    return (select(Grant.project_id, Grant.environment_id, Grant.level)
            .join(TeamMember, TeamMember.team_id == Grant.team_id)
            .where(TeamMember.user_id == bindparam("user_id")))


def _grants(user):
    """{Project or Environment: {id: strongest level}} the user's teams hold."""
    memo = g.setdefault(_MEMO, {}) if has_request_context() else {}
    found = memo.get(user.id)
    if found is None:
        found = memo[user.id] = {Project: {}, Environment: {}}
        db.session.flush()  # what Session.execute would do; the connection's is half the CPU
        rows = db.session.connection().execute(_grants_of_user(), {"user_id": user.id})
        for project_id, environment_id, level in rows:
            levels, target_id = (found[Project], project_id) if project_id is not None \
                else (found[Environment], environment_id)
            if levels.get(target_id) is not AccessLevel.FULL:
                levels[target_id] = _LEVELS[level]
    return found


@event.listens_for(Session, "after_flush")
def _forget_grants(session, _context):
    if has_request_context() and _MEMO in g and any(
            isinstance(obj, Team | TeamMember | Grant)
            for obj in (*session.new, *session.dirty, *session.deleted)):
        g.pop(_MEMO)


def _granted_ids(user, model, full_only=False):
    """Ids of the projects or environments the user's teams hold a level (Full Access) on."""
    return sorted(target_id for target_id, level in _grants(user)[model].items()
                  if not full_only or level == AccessLevel.FULL)


def level_on(user, target):
    """The strongest level a user's teams hold on a project or environment, or None."""
    model = Project if isinstance(target, Project) else Environment
    return _grants(user)[model].get(target.id)


def _granted_target(user, action, obj):
    if action == "view":
        return level_on(user, obj) is not None
    if action == "deploy":
        return level_on(user, obj) == AccessLevel.FULL
    return False


def _strongest(*levels):
    if AccessLevel.FULL in levels:
        return AccessLevel.FULL
    return AccessLevel.READ_ONLY if AccessLevel.READ_ONLY in levels else None


def deployment_level(user, deployment):
    """A non-admin's level on a deployment: the stronger of project's and environment's."""
    return _strongest(level_on(user, deployment.project), level_on(user, deployment.environment))


def _deployment_rule(user, action, deployment):
    level = deployment_level(user, deployment)
    if action == "view":
        return level is not None
    return action == "deploy" and level == AccessLevel.FULL


def can_deploy_to(user, project, environment):
    """May the user create a deployment of `project` in `environment`?"""
    return may_deploy_ids(user, project.id, environment.id)


def may_deploy_ids(user, project_id, environment_id):
    """can_deploy_to() by ids: for lists of (id, name) rows, without loading objects."""
    if not _is_user(user) or not _scope_allows("deploy"):
        return False
    if user.is_admin:
        return True
    grants = _grants(user)
    on_project, on_environment = grants[Project].get(project_id), grants[Environment].get(environment_id)
    return (on_project is not None and on_environment is not None
            and AccessLevel.FULL in (on_project, on_environment))


def deployable_projects(user, project_ids, environment_ids):
    """The ids among `project_ids` the user may deploy to one of `environment_ids` at least:
    may_deploy_ids() over every pair, from the grants once (the new deployment page lists
    hundreds of projects)."""
    if not _is_user(user) or not _scope_allows("deploy"):
        return set()
    if user.is_admin:
        return set(project_ids) if environment_ids else set()
    grants = _grants(user)
    on_environments = {grants[Environment].get(e) for e in environment_ids} - {None}
    if not on_environments:
        return set()
    full_somewhere = AccessLevel.FULL in on_environments
    return {p for p in project_ids if (level := grants[Project].get(p)) is not None
            and (full_somewhere or level == AccessLevel.FULL)}


def may_deploy_somewhere(user):
    """May the user create a deployment of some project in some environment? (can_deploy_to()
    over every pair, from the user's grants.)"""
    if not _is_user(user) or not _scope_allows("deploy"):
        return False
    if user.is_admin:
        return bool(db.session.scalar(select(Project.id).limit(1))
                    and db.session.scalar(select(Environment.id).limit(1)))
    grants = _grants(user)
    projects, environments = grants[Project].values(), grants[Environment].values()
    return bool(projects and environments) and (
        AccessLevel.FULL in projects or AccessLevel.FULL in environments)


def can_deploy_project(user, project):
    """May the user deploy `project` into at least one environment? (Listing the tags of its
    services is for them.)"""
    if not _is_user(user) or not _scope_allows("deploy"):
        return False
    if user.is_admin:
        return True
    on_project = level_on(user, project)
    if on_project is None:
        return False
    if on_project == AccessLevel.FULL:
        return True
    return bool(_granted_ids(user, Environment, full_only=True))


# (model, action) -> rule for a non-admin active user. Admins may do everything.
_USER_RULES = {
    (Project, "view"): _granted_target,
    (Project, "deploy"): _granted_target,
    (Environment, "view"): _granted_target,
    (Environment, "deploy"): _granted_target,
    # Whoever may view an environment sees its nodes' status and capacity; changing a node, and
    # its connection details (host, port, thumbprints), are admin business.
    (Node, "view"): lambda u, a, n: level_on(u, n.environment) is not None,
    (Team, "view"): lambda u, a, t: any(m.user_id == u.id for m in t.members),
    # Users change their own name and password through /me, never through user admin.
    (User, "view"): lambda u, a, o: o.id == u.id,
    (ApiToken, "view"): lambda u, a, o: o.user_id == u.id,
    (ApiToken, "manage"): lambda u, a, o: o.user_id == u.id,
    # Every user sees which registries exist (names, for forms); their URLs, changing them and
    # listing their tags are admin business (deployers list the tags of the services they may
    # deploy through the lifecycle's routes).
    (Registry, "view"): lambda u, a, o: True,
    # Services and plugins are configuration every user may read (deploy forms show them);
    # they hold no secret values, only `${secrets.NAME}` references.
    (Service, "view"): lambda u, a, o: True,
    (Plugin, "view"): lambda u, a, o: True,
    (PipelineVersion, "view"): lambda u, a, o: level_on(u, o.project) is not None,
    (Deployment, "view"): _deployment_rule,
    (Deployment, "deploy"): _deployment_rule,
}
# Classes a non-admin may create objects of (their own tokens).
_USER_CREATABLE = {ApiToken}


def can(user, action, obj):
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    user = _unproxied(user)
    if not _is_user(user) or not _scope_allows(action):
        return False
    if action == "create":
        model = obj if isinstance(obj, type) else type(obj)
        return user.is_admin or model in _USER_CREATABLE
    if user.is_admin:
        return True
    rule = _USER_RULES.get((type(obj), action))
    return bool(rule and rule(user, action, obj))


@functools.cache
def deployments_visible(dialect):
    """The condition on deployments a non-admin may view, the granted ids as two bind parameters
    (visibility_params gives them): for statements built once and run many times (the API's
    deployment routes). On PostgreSQL each list is one array parameter (`= ANY`): an `IN` of a
    few hundred ids costs the web tier more CPU to render than the query costs to run."""
    if dialect == "postgresql":
        def granted(column, name):
            return column == any_(bindparam(name, type_=postgresql.ARRAY(Integer)))
    else:
        def granted(column, name):
            return column.in_(bindparam(name, expanding=True))
    return (granted(Deployment.environment_id, "visible_environment_ids")
            | granted(Deployment.project_id, "visible_project_ids"))


def visibility_params(user, project_id=None, environment_id=None):
    """The values of deployments_visible() for `user`; None when they see every deployment, or
    every one of the project or environment a query is limited to (a grant on either shows all
    of its deployments, and the clause would only cost the database time)."""
    if _is_admin(user) and user.is_active:
        return None
    if not _is_user(user):
        return {"visible_environment_ids": [], "visible_project_ids": []}
    grants = _grants(user)
    if project_id in grants[Project] or environment_id in grants[Environment]:
        return None
    return {"visible_environment_ids": _granted_ids(user, Environment),
            "visible_project_ids": _granted_ids(user, Project)}


def _among(column, ids):
    """`column` is one of the granted `ids` (a few hundred at most, read once per request by
    _grants). On PostgreSQL one array parameter (`= ANY`), as in deployments_visible(): an `IN`
    renders a parameter per id, which cost the pages more CPU than their queries."""
    if db.engine.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(Integer)))
    return column.in_(ids)


def visible(user, model):
    """A select() of the `model` rows the user may view."""
    user = _unproxied(user)
    stmt = select(model)
    if _is_admin(user) and user.is_active:
        return stmt
    if not _is_user(user):
        return stmt.where(False)
    if model is Deployment:
        return stmt.where(deployments_visible(db.engine.dialect.name)).params(visibility_params(user))
    if model is Project:
        return stmt.where(_among(Project.id, _granted_ids(user, Project)))
    if model is Environment:
        return stmt.where(_among(Environment.id, _granted_ids(user, Environment)))
    if model is Node:
        return stmt.where(_among(Node.environment_id, _granted_ids(user, Environment)))
    if model is Team:
        return stmt.where(
            Team.id.in_(select(TeamMember.team_id).where(TeamMember.user_id == user.id))
        )
    if model is User:
        return stmt.where(User.id == user.id)
    if model is ApiToken:
        return stmt.where(ApiToken.user_id == user.id)
    if model in (Registry, Service, Plugin):
        return stmt
    if model is PipelineVersion:
        return stmt.where(_among(PipelineVersion.project_id, _granted_ids(user, Project)))
    if model is DeploymentEvent:
        return stmt.where(DeploymentEvent.deployment_id.in_(
            visible(user, Deployment).with_only_columns(Deployment.id)))
    if model in (AuditEntry, Grant, NodeCommand, ProjectSecret, ProvisioningRun):
        return stmt.where(False)
    raise ValueError(f"no visibility rule for {model.__name__}")


@functools.cache
def by_id(model):
    """SELECT model WHERE id = :obj_id, built once: a prepared statement costs the web tier half
    of what Session.get does (which builds its statement on every call)."""
    return select(model).where(model.id == bindparam("obj_id"))


def get_visible(user, model, obj_id, label=None, stmt=None):
    """Load an object the user may view, or NotFound exactly as if it did not exist. `stmt`:
    by_id(model) with loader options, for a page that reads the object's relations."""
    label = label or model.__tablename__.rstrip("s").replace("_", " ")
    obj = db.session.execute(stmt if stmt is not None else by_id(model), {"obj_id": obj_id}) \
        .unique().scalar_one_or_none() if isinstance(obj_id, int) else None
    if obj is None or not can(user, "view", obj):
        raise NotFound(f"{label} {obj_id} does not exist")
    return obj


def require(user, action, obj, doing=None):
    """Raise unless the user may do `action` on `obj`. Assumes the caller already knows the
    user may view `obj` (use get_visible first), so refusing here is a Forbidden. `doing` names
    what was refused when it is not the action itself ("delete", "replace a secret of"): a
    refused delete should not read "you may not manage"."""
    if not can(user, action, obj):
        what = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise Forbidden(f"you may not {doing or action} this {what.lower()}; ask an admin for access")


def require_admin(user, what):
    """For admin-only areas that are not one object (the audit log, the grant table)."""
    if not (_is_user(user) and user.is_admin):
        raise Forbidden(f"only admins may {what}")
