"""Pages. Thin: parse the form, call one service, flash the outcome."""
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select

from app import access
from app.extensions import db
from app.models import ApiToken, Deployment, Environment, Project
from app.models.identity import SCOPE_READ_ONLY
from app.services import auth, passwords
from app.services.errors import Forbidden, NotFound, ServiceError, Throttled, ValidationFailed
from app.ui import bp, shown_once
from app.ui.forms import EmptyForm, LoginForm, TokenForm

# The overview shows a few of each, with links to the whole lists.
OVERVIEW_PROJECTS = 15
OVERVIEW_DEPLOYMENTS = 10


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
    projects = access.visible(current_user, Project)
    project_count = db.session.scalar(select(func.count()).select_from(projects.subquery()))
    projects = db.session.scalars(projects.order_by(Project.name).limit(OVERVIEW_PROJECTS)).all()
    environments = db.session.scalars(
        access.visible(current_user, Environment).order_by(Environment.name)
    ).all()
    mine = db.session.execute(
        select(Deployment.id, Deployment.name, Deployment.status, Project.name.label("project_name"),
               Environment.name.label("environment_name"))
        .join(Project, Project.id == Deployment.project_id)
        .join(Environment, Environment.id == Deployment.environment_id)
        .where(Deployment.created_by_id == current_user.id, Deployment.deleted_at.is_(None))
        .order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(OVERVIEW_DEPLOYMENTS)).all()
    levels = {}
    if not current_user.is_admin:
        levels = {obj: access.level_on(current_user, obj) for obj in [*projects, *environments]}
    return render_template("ui/index.html", projects=projects, project_count=project_count,
                           environments=environments, levels=levels, mine=mine,
                           may_deploy=access.may_deploy_somewhere(current_user))


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
        _token, raw = auth.create_token(_actor(), _actor(), form.name.data,
                                        expires_in_days=form.expires_in_days.data,
                                        scope=form.scope.data or SCOPE_READ_ONLY)
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
