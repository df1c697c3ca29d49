"""The callers of the two authorization matrices (API: tests/test_access_matrix.py, bearer
tokens; UI: tests/security/test_ui_matrix.py, cookie sessions), and the two asymmetric ones
both use: Full Access on the project with Read-Only on the environment ("full_ro") and the
reverse ("ro_full"). A deployment's level is the stronger of the two (app/access.py), so both
may change deployments there; neither is a member of the spec example's teams."""
from app.extensions import db
from app.models import AccessLevel, Grant, Team, TeamMember

# username, team name, (project level, environment level)
ASYMMETRIC = {
    "full_ro": ("mixed-full-ro", "Mixed A", (AccessLevel.FULL, AccessLevel.READ_ONLY)),
    "ro_full": ("mixed-ro-full", "Mixed B", (AccessLevel.READ_ONLY, AccessLevel.FULL)),
}


def user_in_team(make_user, username, team_name, grants):
    """A user alone in a new team holding `grants` ([({"project_id": id} or
    {"environment_id": id}, AccessLevel)]), committed."""
    user = make_user(username)
    team = Team(name=team_name)
    db.session.add(team)
    db.session.flush()
    db.session.add(TeamMember(team_id=team.id, user_id=user.id))
    for target, level in grants:
        db.session.add(Grant(team_id=team.id, level=level.value, **target))
    db.session.commit()
    return user


def asymmetric_callers(make_user, pairs):
    """{"full_ro": user, "ro_full": user} with their levels on every (project, environment)
    of `pairs`."""
    callers = {}
    for caller, (username, team_name, (on_project, on_environment)) in ASYMMETRIC.items():
        grants = [grant for project, environment in pairs
                  for grant in (({"project_id": project.id}, on_project),
                                ({"environment_id": environment.id}, on_environment))]
        callers[caller] = user_in_team(make_user, username, team_name, grants)
    return callers
