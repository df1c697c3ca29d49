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
from app.services.errors import Forbidden, NotFound, ServiceError, Throttled, ValidationFailed
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


def service_call(redirect_to, reshow=None):
    """Run a form action; a ServiceError becomes a flashed message, not a stack trace. A
    refusal stays one: Forbidden goes on to the 403 page (app/errors.py), never a flash on a
    redirect that a script would read as success. Bad input (400, 409, 422) goes to
    `reshow(exc, **kwargs)` when given: the page again, the form as typed, the problem named
    and the service's status."""

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
                if reshow is not None and exc.status in (400, 409, 422):
                    return reshow(exc, **kwargs)
                flash(exc.message, "error")
                return redirect(redirect_to(**kwargs))
            return result or redirect(redirect_to(**kwargs))

        return wrapper

    return decorator


def form_problem(form):
    """A form WTForms refused, as the services refuse one: the first problem as the message,
    each one named by field (422)."""
    problems = {field.name: field.errors[0] for field in form if field.errors}
    first = next(field for field in form if field.errors)
    return ValidationFailed(f"{first.label.text}: {first.errors[0]}", problems)


def _problem(exc):
    """What a page shows of a refused form, and its status."""
    if exc is None:
        return {}, 200
    return {"message": exc.message, "errors": exc.fields}, exc.status


def _reshow(page, exc):
    """The page again after bad input: nothing the service began stays in the session."""
    db.session.rollback()
    return page(exc)


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


def _settings_page(exc=None):
    tokens = db.session.scalars(
        access.visible(current_user, ApiToken).order_by(ApiToken.id.desc())
    ).all()
    problem, status = _problem(exc)
    new_token = None if exc else (shown_once.take("api_token") or {}).get("token")
    return render_template("ui/settings.html", tokens=tokens, form=TokenForm(), empty=EmptyForm(),
                           new_token=new_token, **problem), status


@bp.get("/settings")
def settings():
    return _settings_page()


@bp.post("/settings/tokens")
def create_token():
    form = TokenForm()
    try:
        if not form.validate_on_submit():
            raise form_problem(form)
        _token, raw = auth.create_token(_actor(), _actor(), form.name.data)
    except ServiceError as exc:
        if isinstance(exc, Forbidden):
            raise
        return _reshow(_settings_page, exc)
    shown_once.remember("api_token", {"token": raw})  # for the next page only
    return redirect(url_for("ui.settings"))


@bp.post("/settings/tokens/<int:token_id>/revoke")
@service_call(lambda token_id: url_for("ui.settings"))
def revoke_token(token_id):
    token = access.get_visible(current_user, ApiToken, token_id, "token")
    access.require(current_user, "manage", token)
    auth.revoke_token(_actor(), token)
    flash(f"Token {token.name!r} revoked.", "ok")


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
