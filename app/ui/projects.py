"""Project pages: the list, one project's settings (CPU and memory limits per deployment, an
auto-cleanup override), its secrets (names only; values are write-only) and the teams granted
access to it. Admins change all of it; users whose team holds a grant read the project; anyone
else gets the 404 page, as if it did not exist. Thin: read the form, call one service function,
flash the outcome, or show the service's problems next to the form they came from.

Access is asked before anything else: a refused change is the 403 page, never a flash that
looks like a validation problem."""
from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload
from wtforms.fields.choices import SelectChoice

from app import access
from app.extensions import db
from app.models import Grant, Project, ProjectSecret, Team
from app.services import catalog, teams
from app.services.errors import NotFound, ServiceError, ValidationFailed
from app.ui import bp
from app.ui.forms import EmptyForm
from app.ui.pages import _actor
from app.ui.project_forms import (
    GrantLevelForm,
    ProjectForm,
    ProjectGrantForm,
    SecretForm,
    SecretReplaceForm,
    project_data,
    project_values,
)

PER_PAGE = 25


def _load(project_id, action="view", doing=None):
    """The project if the user may see it (404 otherwise); then the action, refused as a 403."""
    try:
        project = access.get_visible(current_user, Project, project_id, "project")
    except NotFound:
        abort(404)
    access.require(current_user, action, project, doing)
    return project


def _refused(exc):
    """A service refused: nothing it began may stay in the session."""
    db.session.rollback()
    return exc.fields, exc.message, exc.status


def _to_project(project_id):
    return url_for("ui.project_detail", project_id=project_id)


# --- the list -----------------------------------------------------------------------------------
def _list_page(form, errors=None, message=None, status=200):
    page = max(request.args.get("page", 1, type=int), 1)
    stmt = access.visible(current_user, Project)
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = db.session.scalars(stmt.order_by(Project.name).limit(PER_PAGE)
                              .offset((page - 1) * PER_PAGE)).all()
    levels = {} if current_user.is_admin else {p.id: access.level_on(current_user, p) for p in rows}
    return render_template(
        "ui/projects.html", projects=rows, levels=levels, total=total, page=page,
        pages=max(1, -(-total // PER_PAGE)), errors=errors or {}, message=message,
        form=form if access.can(current_user, "create", Project) else None,
    ), status


@bp.get("/projects")
def project_list():
    return _list_page(ProjectForm(formdata=None))


@bp.post("/projects")
def project_create():
    access.require(current_user, "create", Project)
    form = ProjectForm()
    try:
        values = project_values(form)
        project = catalog.create(_actor(), Project, values.pop("name"), values.pop("description"),
                                 **values)
    except ServiceError as exc:
        return _list_page(form, *_refused(exc))
    flash(f"Project {project.name} created. Add its secrets and grant teams access below.", "ok")
    return redirect(_to_project(project.id))


# --- one project --------------------------------------------------------------------------------
def _grant_form(project, grants):
    form = ProjectGrantForm(formdata=None)
    granted = {g.team_id for g in grants}
    form.team_id.choices = [SelectChoice(t.id, t.name) for t in
                            db.session.scalars(select(Team).order_by(Team.name))
                            if t.id not in granted]
    return form


def _project_page(project, errors=None, message=None, status=200, **forms):
    """The project's page. `errors` is {form: {field: hint}}, `forms` the submitted forms to
    show again (the others are fresh)."""
    can_manage = access.can(current_user, "manage", project)
    context = {"project": project, "can_manage": can_manage, "errors": errors or {},
               "message": message, "empty": EmptyForm(),
               "may_deploy": access.can_deploy_project(current_user, project),
               "level": None if current_user.is_admin else access.level_on(current_user, project)}
    if can_manage:
        grants = db.session.scalars(teams.grants_query(project_id=project.id)
                                    .options(selectinload(Grant.team))).all()
        grants.sort(key=lambda g: g.team.name)
        context.update(
            settings_form=forms.get("settings") or ProjectForm(formdata=None, data=project_data(project)),
            secret_form=forms.get("secret") or SecretForm(formdata=None),
            replace_form=SecretReplaceForm(formdata=None),
            grant_form=forms.get("grant") or _grant_form(project, grants),
            level_form=GrantLevelForm(formdata=None), grants=grants,
            secrets=db.session.scalars(select(ProjectSecret).where(
                ProjectSecret.project_id == project.id).order_by(ProjectSecret.name)).all(),
        )
    # Secret names only ever reach this page; values never do. No cache keeps a copy anyway.
    return render_template("ui/project.html", **context), status, {"Cache-Control": "no-store"}


def _form_problem(project_id, which, form, exc):
    fields, message, status = _refused(exc)
    return _project_page(db.session.get(Project, project_id), {which: fields}, message, status,
                         **{which: form})


@bp.get("/projects/<int:project_id>")
def project_detail(project_id):
    return _project_page(_load(project_id))


@bp.post("/projects/<int:project_id>")
def project_update(project_id):
    project = _load(project_id, "manage", "change")
    form = ProjectForm()
    try:
        values = project_values(form)
        catalog.update(_actor(), project, **values)
    except ServiceError as exc:
        return _form_problem(project_id, "settings", form, exc)
    flash(f"Project {project.name} saved; new deployments get these limits.", "ok")
    return redirect(_to_project(project.id))


@bp.post("/projects/<int:project_id>/delete")
def project_delete(project_id):
    project = _load(project_id, "manage", "delete")
    name = project.name
    try:
        catalog.delete(_actor(), project)
    except ServiceError as exc:
        # In use (live deployments): told on the project's page, where the links to them are.
        _refused(exc)
        flash(exc.message, "error")
        return redirect(_to_project(project_id))
    flash(f"Project {name} deleted.", "ok")
    return redirect(url_for("ui.project_list"))


# --- secrets ------------------------------------------------------------------------------------
@bp.post("/projects/<int:project_id>/secrets")
def project_secret_put(project_id):
    project = _load(project_id, "manage", "set a secret of")
    form = SecretForm()
    name = (form.name.data or "").strip()
    try:
        _secret, created = catalog.put_secret(_actor(), project, name, form.value.data or "")
    except ServiceError as exc:
        return _form_problem(project_id, "secret", form, exc)
    flash(f"Secret {name} {'added' if created else 'replaced'}.", "ok")
    return redirect(_to_project(project.id) + "#secrets")


@bp.post("/projects/<int:project_id>/secrets/<name>/replace")
def project_secret_replace(project_id, name):
    project = _load(project_id, "manage", "replace a secret of")
    if db.session.scalar(select(ProjectSecret.id).where(
            ProjectSecret.project_id == project.id, ProjectSecret.name == name)) is None:
        abort(404)  # replacing is not a way to add one under a name the page never showed
    form = SecretReplaceForm()
    try:
        catalog.put_secret(_actor(), project, name, form.value.data or "")
    except ServiceError as exc:
        fields, message, status = _refused(exc)
        return _project_page(db.session.get(Project, project_id),
                             {"replace": {name: fields.get("value", message)}}, message, status)
    flash(f"Secret {name} replaced.", "ok")
    return redirect(_to_project(project.id) + "#secrets")


@bp.post("/projects/<int:project_id>/secrets/<name>/delete")
def project_secret_delete(project_id, name):
    project = _load(project_id, "manage", "delete a secret of")
    try:
        catalog.delete_secret(_actor(), project, name)
    except NotFound:
        abort(404)
    flash(f"Secret {name} deleted.", "ok")
    return redirect(_to_project(project.id) + "#secrets")


# --- grants -------------------------------------------------------------------------------------
def _grant_of(project, grant_id):
    row = db.session.get(Grant, grant_id)
    if row is None or row.project_id != project.id:
        abort(404)
    return row


@bp.post("/projects/<int:project_id>/grants")
def project_grant_add(project_id):
    project = _load(project_id, "manage", "grant access to")
    form = ProjectGrantForm()
    team = db.session.get(Team, form.team_id.data) if form.team_id.data else None
    try:
        if team is None:
            raise ValidationFailed("choose a team to grant access to", {"team_id": "choose a team"})
        teams.grant(_actor(), team, project, form.level.data)
    except ServiceError as exc:
        fields, message, status = _refused(exc)
        grants = db.session.scalars(teams.grants_query(project_id=project_id)).all()
        again = _grant_form(db.session.get(Project, project_id), grants)
        again.level.data = form.level.data
        # "already granted" is about the project for the service; on this form, the team.
        fields = {("team_id" if key == "project_id" else key): hint for key, hint in fields.items()}
        return _project_page(db.session.get(Project, project_id), {"grant": fields}, message,
                             status, grant=again)
    level = "Full Access" if form.level.data == "full" else "Read-Only"
    flash(f"Team {team.name} granted {level} on {project.name}.", "ok")
    return redirect(_to_project(project.id) + "#grants")


@bp.post("/projects/<int:project_id>/grants/<int:grant_id>")
def project_grant_level(project_id, grant_id):
    project = _load(project_id, "manage", "change the access to")
    row = _grant_of(project, grant_id)
    form = GrantLevelForm()
    try:
        teams.change_level(_actor(), row, form.level.data)
    except ServiceError as exc:
        fields, message, status = _refused(exc)
        return _project_page(db.session.get(Project, project_id), {"level": fields}, message, status)
    level = "Full Access" if row.level == "full" else "Read-Only"
    flash(f"Team {row.team.name} now has {level} on {project.name}.", "ok")
    return redirect(_to_project(project.id) + "#grants")


@bp.post("/projects/<int:project_id>/grants/<int:grant_id>/remove")
def project_grant_remove(project_id, grant_id):
    project = _load(project_id, "manage", "remove access to")
    row = _grant_of(project, grant_id)
    team_name = row.team.name
    teams.revoke(_actor(), row)
    flash(f"Team {team_name} no longer has access to {project.name}.", "ok")
    return redirect(_to_project(project.id) + "#grants")
