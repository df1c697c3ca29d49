"""Pages. Thin: parse the form, call one service, flash the outcome."""
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select
from wtforms.fields.choices import SelectChoice

from app import access
from app.extensions import db
from app.models import ApiToken, Environment, Grant, Project, Team, User
from app.services import auth, passwords, teams, users
from app.services.errors import Forbidden, NotFound, ServiceError, Throttled
from app.ui import bp, shown_once
from app.ui.forms import EmptyForm, GrantForm, LoginForm, MemberForm, TeamForm, TokenForm, UserForm


def _actor():
    return current_user._get_current_object()


def _safe_next(target):
    """Only same-site paths: never redirect a login to another host."""
    if not target:
        return url_for("ui.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("ui.index")
    return target


def service_call(redirect_to):
    """Run a form action; a ServiceError becomes a flashed message, not a stack trace. A
    refusal stays one: Forbidden goes on to the 403 page (app/errors.py), never a flash on a
    redirect that a script would read as success."""

    def decorator(fn):
        @wraps(fn)
        def wrapper(**kwargs):
            form = EmptyForm()
            if not form.validate_on_submit():
                flash("The form expired; reload the page and try again.", "error")
                return redirect(redirect_to(**kwargs))
            try:
                result = fn(**kwargs)
            except NotFound:
                abort(404)
            except Forbidden:
                raise
            except ServiceError as exc:
                db.session.rollback()
                flash(exc.message, "error")
                return redirect(redirect_to(**kwargs))
            return result or redirect(redirect_to(**kwargs))

        return wrapper

    return decorator


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("ui.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = auth.authenticate(form.username.data, form.password.data, request.remote_addr)
        except Throttled as exc:
            flash(exc.message, "error")
            status = 429
        except ServiceError as exc:
            flash(exc.message, "error")
            status = 401
        else:
            session.clear()  # a fresh session on login: no fixation
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
    elif request.method == "POST":
        flash("Enter a username and a password.", "error")
        status = 400
    return render_template("ui/login.html", form=form, rules=passwords.rules()), status


@bp.post("/logout")
def logout():
    if EmptyForm().validate_on_submit():
        logout_user()
        session.clear()
    return redirect(url_for("ui.login"))


@bp.get("/")
def index():
    projects = db.session.scalars(access.visible(current_user, Project).order_by(Project.name)).all()
    environments = db.session.scalars(
        access.visible(current_user, Environment).order_by(Environment.name)
    ).all()
    levels = {}
    if not current_user.is_admin:
        levels = {obj: access.level_on(current_user, obj) for obj in [*projects, *environments]}
    return render_template("ui/index.html", projects=projects, environments=environments,
                           levels=levels)


@bp.get("/settings")
def settings():
    tokens = db.session.scalars(
        access.visible(current_user, ApiToken).order_by(ApiToken.id.desc())
    ).all()
    return render_template("ui/settings.html", tokens=tokens, form=TokenForm(), empty=EmptyForm(),
                           new_token=(shown_once.take("api_token") or {}).get("token"))


@bp.post("/settings/tokens")
def create_token():
    form = TokenForm()
    if form.validate_on_submit():
        try:
            _token, raw = auth.create_token(_actor(), _actor(), form.name.data)
        except ServiceError as exc:
            flash(exc.message, "error")
        else:
            shown_once.remember("api_token", {"token": raw})  # for the next page only
    else:
        flash("Give the token a name of at most 64 characters.", "error")
    return redirect(url_for("ui.settings"))


@bp.post("/settings/tokens/<int:token_id>/revoke")
@service_call(lambda token_id: url_for("ui.settings"))
def revoke_token(token_id):
    token = access.get_visible(current_user, ApiToken, token_id, "token")
    access.require(current_user, "manage", token)
    auth.revoke_token(_actor(), token)
    flash(f"Token {token.name!r} revoked.", "ok")


# Users (admins)
@bp.get("/admin/users")
def admin_users():
    access.require_admin(current_user, "manage users")
    rows = db.session.scalars(select(User).order_by(User.username)).all()
    return render_template("admin/users.html", users=rows, form=UserForm(), empty=EmptyForm(),
                           rules=passwords.rules())


@bp.post("/admin/users")
def admin_create_user():
    access.require_admin(current_user, "manage users")
    form = UserForm()
    if form.validate_on_submit():
        try:
            user = users.create(_actor(), form.username.data.strip(), form.password.data,
                                form.role.data, form.full_name.data or "")
        except ServiceError as exc:
            flash(exc.message, "error")
        else:
            flash(f"User {user.username} created.", "ok")
    else:
        flash("Fill in username and initial password.", "error")
    return redirect(url_for("ui.admin_users"))


@bp.post("/admin/users/<int:user_id>/active")
@service_call(lambda user_id: url_for("ui.admin_users"))
def admin_toggle_user(user_id):
    access.require_admin(current_user, "manage users")
    user = users.get(user_id)
    users.update(_actor(), user, is_active=not user.is_active)
    flash(f"User {user.username} {'enabled' if user.is_active else 'disabled'}.", "ok")


# Teams
@bp.get("/teams")
def team_list():
    rows = db.session.scalars(access.visible(current_user, Team).order_by(Team.name)).all()
    return render_template("admin/teams.html", teams=rows, form=TeamForm())


@bp.post("/teams")
def team_create():
    access.require(current_user, "create", Team)
    form = TeamForm()
    if form.validate_on_submit():
        try:
            team = teams.create(_actor(), form.name.data.strip(), form.description.data or "")
        except ServiceError as exc:
            flash(exc.message, "error")
        else:
            return redirect(url_for("ui.team_detail", team_id=team.id))
    else:
        flash("Give the team a name of at most 64 characters.", "error")
    return redirect(url_for("ui.team_list"))


def _team_for(action, team_id, doing=None):
    try:
        team = access.get_visible(current_user, Team, team_id, "team")
    except NotFound:
        abort(404)
    access.require(current_user, action, team, doing)
    return team


@bp.get("/teams/<int:team_id>")
def team_detail(team_id):
    team = _team_for("view", team_id)
    can_manage = access.can(current_user, "manage", team)
    member_form = grant_form = None
    if can_manage:
        member_ids = {m.user_id for m in team.members}
        member_form = MemberForm()
        member_form.user_id.choices = [
            SelectChoice(u.id, u.username)
            for u in db.session.scalars(select(User).order_by(User.username))
            if u.id not in member_ids
        ]
        grant_form = GrantForm()
        grant_form.target.choices = _target_choices()
    grants = db.session.scalars(teams.grants_query(team_id=team.id)).all() if can_manage else []
    return render_template("admin/team.html", team=team, can_manage=can_manage, grants=grants,
                           member_form=member_form, grant_form=grant_form, empty=EmptyForm())


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
    if form.validate_on_submit():
        user = users.get(form.user_id.data)
        teams.add_member(_actor(), team, user)
        flash(f"{user.username} added to team {team.name}.", "ok")
    else:
        flash("Choose a user to add.", "error")
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
    if form.validate_on_submit():
        kind, _, target_id = form.target.data.partition(":")
        model = Project if kind == "project" else Environment
        try:
            target = access.get_visible(current_user, model, int(target_id), kind)
            teams.grant(_actor(), team, target, form.level.data)
        except ServiceError as exc:
            db.session.rollback()
            flash(exc.message, "error")
        else:
            level = "Full Access" if form.level.data == "full" else "Read-Only"
            flash(f"Team {team.name} granted {level} on {kind} {target.name}.", "ok")
    else:
        flash("Choose a project or environment and an access level.", "error")
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
