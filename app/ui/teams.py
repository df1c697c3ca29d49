"""Users (admins) and teams with their members and grants. Thin: parse the form, call one
service, flash the outcome; bad input shows the form again, a refusal is the 403 page."""
from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select
from wtforms.fields.choices import SelectChoice

from app import access
from app.extensions import db
from app.models import Environment, Grant, Project, Team, User
from app.services import passwords, teams, users
from app.services.errors import Forbidden, NotFound, ServiceError
from app.ui import bp
from app.ui.forms import EmptyForm, GrantForm, MemberForm, TeamForm, UserForm
from app.ui.pages import _actor, _problem, _reshow, form_problem, service_call


# Users (admins)
def _users_page(exc=None):
    rows = db.session.scalars(select(User).order_by(User.username)).all()
    problem, status = _problem(exc)
    return render_template("admin/users.html", users=rows, form=UserForm(), empty=EmptyForm(),
                           rules=passwords.rules(), **problem), status


@bp.get("/admin/users")
def admin_users():
    access.require_admin(current_user, "manage users")
    return _users_page()


@bp.post("/admin/users")
def admin_create_user():
    access.require_admin(current_user, "manage users")
    form = UserForm()
    try:
        if not form.validate_on_submit():
            raise form_problem(form)
        user = users.create(_actor(), form.username.data.strip(), form.password.data,
                            form.role.data, form.full_name.data or "")
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            raise
        return _reshow(_users_page, exc)
    flash(f"User {user.username} created.", "ok")
    return redirect(url_for("ui.admin_users"))


@bp.post("/admin/users/<int:user_id>/active")
@service_call(lambda user_id: url_for("ui.admin_users"))
def admin_toggle_user(user_id):
    access.require_admin(current_user, "manage users")
    user = users.get(user_id)
    users.update(_actor(), user, is_active=not user.is_active)
    flash(f"User {user.username} {'enabled' if user.is_active else 'disabled'}.", "ok")


# Teams
def _teams_page(exc=None):
    rows = db.session.scalars(access.visible(current_user, Team).order_by(Team.name)).all()
    problem, status = _problem(exc)
    return render_template("admin/teams.html", teams=rows, form=TeamForm(), **problem), status


@bp.get("/teams")
def team_list():
    return _teams_page()


@bp.post("/teams")
def team_create():
    access.require(current_user, "create", Team)
    form = TeamForm()
    try:
        if not form.validate_on_submit():
            raise form_problem(form)
        team = teams.create(_actor(), form.name.data.strip(), form.description.data or "")
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            raise
        return _reshow(_teams_page, exc)
    flash(f"Team {team.name} created.", "ok")
    return redirect(url_for("ui.team_detail", team_id=team.id))


def _team_for(action, team_id, doing=None):
    try:
        team = access.get_visible(current_user, Team, team_id, "team")
    except NotFound:
        abort(404)
    access.require(current_user, action, team, doing)
    return team


def _team_page(team_id, exc=None, which=None):
    """The team's page; after a refused form (`which`: member or grant) that form as sent,
    its problem above it."""
    team = _team_for("view", team_id)
    can_manage = access.can(current_user, "manage", team)
    member_form = grant_form = None
    if can_manage:
        member_ids = {m.user_id for m in team.members}
        member_form = MemberForm(**({} if which == "member" else {"formdata": None}))
        member_form.user_id.choices = [
            SelectChoice(u.id, u.username)
            for u in db.session.scalars(select(User).order_by(User.username))
            if u.id not in member_ids
        ]
        grant_form = GrantForm(**({} if which == "grant" else {"formdata": None}))
        grant_form.target.choices = _target_choices()
    grants = db.session.scalars(teams.grants_query(team_id=team.id)).all() if can_manage else []
    problem, status = _problem(exc)
    return render_template("admin/team.html", team=team, can_manage=can_manage, grants=grants,
                           member_form=member_form, grant_form=grant_form, empty=EmptyForm(),
                           which=which, **problem), status


@bp.get("/teams/<int:team_id>")
def team_detail(team_id):
    return _team_page(team_id)


def _target_choices():
    projects = db.session.scalars(select(Project).order_by(Project.name))
    environments = db.session.scalars(select(Environment).order_by(Environment.name))
    return [SelectChoice(f"project:{p.id}", f"Project {p.name}") for p in projects] + [
        SelectChoice(f"environment:{e.id}", f"Environment {e.name}") for e in environments
    ]


@bp.post("/teams/<int:team_id>/members")
def team_add_member(team_id):
    team = _team_for("manage", team_id, "add members to")
    form = MemberForm()
    form.user_id.choices = [SelectChoice(u.id, u.username) for u in db.session.scalars(select(User))]
    try:
        if not form.validate_on_submit():
            raise form_problem(form)
        user = users.get(form.user_id.data)
        teams.add_member(_actor(), team, user)
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            raise
        return _reshow(lambda e: _team_page(team_id, e, "member"), exc)
    flash(f"{user.username} added to team {team.name}.", "ok")
    return redirect(url_for("ui.team_detail", team_id=team.id))


@bp.post("/teams/<int:team_id>/members/<int:user_id>/remove")
@service_call(lambda team_id, user_id: url_for("ui.team_detail", team_id=team_id))
def team_remove_member(team_id, user_id):
    team, user = _team_for("manage", team_id, "remove members of"), users.get(user_id)
    teams.remove_member(_actor(), team, user)
    flash(f"{user.username} removed from team {team.name}.", "ok")


@bp.post("/teams/<int:team_id>/grants")
def team_add_grant(team_id):
    team = _team_for("manage", team_id, "grant access for")
    form = GrantForm()
    form.target.choices = _target_choices()
    try:
        if not form.validate_on_submit():
            raise form_problem(form)
        kind, _, target_id = form.target.data.partition(":")
        model = Project if kind == "project" else Environment
        target = access.get_visible(current_user, model, int(target_id), kind)
        teams.grant(_actor(), team, target, form.level.data)
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            raise
        return _reshow(lambda e: _team_page(team_id, e, "grant"), exc)
    level = "Full Access" if form.level.data == "full" else "Read-Only"
    flash(f"Team {team.name} granted {level} on {kind} {target.name}.", "ok")
    return redirect(url_for("ui.team_detail", team_id=team.id))


@bp.post("/grants/<int:grant_id>/remove")
@service_call(lambda grant_id: url_for("ui.team_list"))
def grant_remove(grant_id):
    row = access.get_visible(current_user, Grant, grant_id, "grant")
    access.require(current_user, "manage", row)
    team_id, team_name, kind, target_name = (row.team_id, row.team.name,
                                             "project" if row.project_id else "environment",
                                             row.target.name)
    teams.revoke(_actor(), row)
    flash(f"Team {team_name} no longer has access to {kind} {target_name}.", "ok")
    return redirect(url_for("ui.team_detail", team_id=team_id))


@bp.post("/teams/<int:team_id>/delete")
@service_call(lambda team_id: url_for("ui.team_list"))
def team_delete(team_id):
    team = _team_for("manage", team_id, "delete")
    teams.delete(_actor(), team)
    flash(f"Team {team.name} deleted.", "ok")
