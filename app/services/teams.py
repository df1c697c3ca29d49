"""Teams, their members and their grants on projects and environments."""
from sqlalchemy import select

from app.extensions import db
from app.models import AccessLevel, Grant, Team, TeamMember
from app.services import audit
from app.services.errors import Conflict, NotFound, ValidationFailed
from app.services.names import TEAM_NAME_HINT, TEAM_NAME_PATTERN, check

LEVELS = tuple(level.value for level in AccessLevel)


def _check_unique_name(name, team_id=None):
    existing = db.session.scalar(select(Team).where(Team.name == name))
    if existing is not None and existing.id != team_id:
        raise Conflict(f"a team named {name!r} exists; choose another name", {"name": "already taken"})


def create(actor, name, description=""):
    check("name", name, TEAM_NAME_PATTERN, TEAM_NAME_HINT)
    _check_unique_name(name)
    team = Team(name=name, description=description or "")
    db.session.add(team)
    db.session.flush()
    audit.record(actor, "team.create", "team", team)
    db.session.commit()
    return team


def update(actor, team, name=None, description=None):
    changes = {}
    if name is not None and name != team.name:
        check("name", name, TEAM_NAME_PATTERN, TEAM_NAME_HINT)
        _check_unique_name(name, team.id)
        changes["name"] = [team.name, name]
        team.name = name
    if description is not None and description != team.description:
        team.description = changes["description"] = description
    if changes:
        audit.record(actor, "team.update", "team", team, changes)
    db.session.commit()
    return team


def delete(actor, team):
    audit.record(actor, "team.delete", "team", team)
    db.session.delete(team)
    db.session.commit()


def add_member(actor, team, user):
    if db.session.get(TeamMember, (team.id, user.id)) is None:
        db.session.add(TeamMember(team_id=team.id, user_id=user.id))
        audit.record(actor, "team.add_member", "team", team, {"user": user.username})
        db.session.commit()


def remove_member(actor, team, user):
    member = db.session.get(TeamMember, (team.id, user.id))
    if member is None:
        raise NotFound(f"user {user.id} is not a member of team {team.id}")
    db.session.delete(member)
    audit.record(actor, "team.remove_member", "team", team, {"user": user.username})
    db.session.commit()


def _check_level(level):
    if level not in LEVELS:
        raise ValidationFailed(
            f"level must be one of {', '.join(LEVELS)}", {"level": "use read_only or full"}
        )


def grant(actor, team, target, level):
    """Give a team a level on a project or environment; one grant per team and target."""
    _check_level(level)
    kind = target.__tablename__.rstrip("s")
    column = Grant.project_id if kind == "project" else Grant.environment_id
    existing = db.session.scalar(select(Grant).where(Grant.team_id == team.id, column == target.id))
    if existing is not None:
        raise Conflict(
            f"team {team.name!r} already has a grant on this {kind}; change its level instead",
            {f"{kind}_id": "already granted"},
        )
    row = Grant(team_id=team.id, level=level, **{f"{kind}_id": target.id})
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "grant.create", kind, target, {"team": team.name, "level": level})
    db.session.commit()
    return row


def change_level(actor, row, level):
    _check_level(level)
    if level != row.level:
        audit.record(actor, "grant.update", _kind(row), row.target,
                     {"team": row.team.name, "level": [row.level, level]})
        row.level = level
    db.session.commit()
    return row


def revoke(actor, row):
    audit.record(actor, "grant.delete", _kind(row), row.target,
                 {"team": row.team.name, "level": row.level})
    db.session.delete(row)
    db.session.commit()


def _kind(row):
    return "project" if row.project_id is not None else "environment"


def grants_query(team_id=None, project_id=None, environment_id=None):
    stmt = select(Grant)
    if team_id is not None:
        stmt = stmt.where(Grant.team_id == team_id)
    if project_id is not None:
        stmt = stmt.where(Grant.project_id == project_id)
    if environment_id is not None:
        stmt = stmt.where(Grant.environment_id == environment_id)
    return stmt.order_by(Grant.id)
