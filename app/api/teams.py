"""Teams, members and grants (admins manage; members see their own teams)."""
from flask_login import current_user

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import (
    GrantCreate,
    GrantOut,
    GrantQuery,
    GrantUpdate,
    Page,
    Pagination,
    TeamCreate,
    TeamDetail,
    TeamOut,
    TeamUpdate,
)
from app.models import Environment, Grant, Project, Team, User
from app.services import teams


def _actor():
    return current_user._get_current_object()


def _detail(team):
    return {**dump(TeamOut, team),
            "members": [{"id": m.user.id, "username": m.user.username,
                         "full_name": m.user.full_name} for m in team.members]}


@operation("GET", "/teams", summary="Teams (admins see all, others their own)", tag="teams",
           query=Pagination, response=Page[TeamOut])
def list_teams(params):
    return paginate(access.visible(current_user, Team).order_by(Team.name), params, TeamOut)


@operation("POST", "/teams", summary="Create a team", tag="teams", body=TeamCreate,
           response=TeamDetail, status=201)
def create_team(data):
    access.require(current_user, "create", Team)
    return _detail(teams.create(_actor(), data.name, data.description))


@operation("GET", "/teams/<int:team_id>", summary="A team with its members", tag="teams",
           response=TeamDetail)
def get_team(team_id):
    return _detail(access.get_visible(current_user, Team, team_id, "team"))


@operation("PATCH", "/teams/<int:team_id>", summary="Rename or describe a team", tag="teams",
           body=TeamUpdate, response=TeamDetail)
def update_team(team_id, data):
    team = access.get_visible(current_user, Team, team_id, "team")
    access.require(current_user, "manage", team)
    return _detail(teams.update(_actor(), team, data.name, data.description))


@operation("DELETE", "/teams/<int:team_id>", summary="Delete a team and its grants",
           tag="teams", status=204)
def delete_team(team_id):
    team = access.get_visible(current_user, Team, team_id, "team")
    access.require(current_user, "manage", team)
    teams.delete(_actor(), team)


def _team_and_user(team_id, user_id):
    team = access.get_visible(current_user, Team, team_id, "team")
    access.require(current_user, "manage", team)
    return team, access.get_visible(current_user, User, user_id, "user")


@operation("PUT", "/teams/<int:team_id>/members/<int:user_id>", summary="Add a member",
           tag="teams", response=TeamDetail)
def add_member(team_id, user_id):
    team, user = _team_and_user(team_id, user_id)
    teams.add_member(_actor(), team, user)
    return _detail(team)


@operation("DELETE", "/teams/<int:team_id>/members/<int:user_id>", summary="Remove a member",
           tag="teams", status=204)
def remove_member(team_id, user_id):
    team, user = _team_and_user(team_id, user_id)
    teams.remove_member(_actor(), team, user)


@operation("GET", "/grants", summary="Grants, filtered by team, project or environment",
           tag="teams", query=GrantQuery, response=Page[GrantOut])
def list_grants(params):
    access.require_admin(current_user, "list grants")
    stmt = teams.grants_query(params.team_id, params.project_id, params.environment_id)
    return paginate(stmt, params, GrantOut)


@operation("POST", "/grants", summary="Grant a team Full Access or Read-Only on a target",
           tag="teams", body=GrantCreate, response=GrantOut, status=201)
def create_grant(data):
    access.require(current_user, "create", Grant)
    team = access.get_visible(current_user, Team, data.team_id, "team")
    if data.project_id is not None:
        target = access.get_visible(current_user, Project, data.project_id, "project")
    else:
        target = access.get_visible(current_user, Environment, data.environment_id, "environment")
    return dump(GrantOut, teams.grant(_actor(), team, target, data.level))


@operation("PATCH", "/grants/<int:grant_id>", summary="Change a grant's level", tag="teams",
           body=GrantUpdate, response=GrantOut)
def update_grant(grant_id, data):
    row = access.get_visible(current_user, Grant, grant_id, "grant")
    access.require(current_user, "manage", row)
    return dump(GrantOut, teams.change_level(_actor(), row, data.level))


@operation("DELETE", "/grants/<int:grant_id>", summary="Remove a grant", tag="teams", status=204)
def delete_grant(grant_id):
    row = access.get_visible(current_user, Grant, grant_id, "grant")
    access.require(current_user, "manage", row)
    teams.revoke(_actor(), row)
