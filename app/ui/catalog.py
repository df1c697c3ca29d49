"""Catalog pages: registries (admins only: their URLs are admin business, as in the API),
services and plugins (everyone reads them, admins change them) and a project's pipeline
versions (whoever sees the project; admins import). Thin: read the form, call one service
function, flash the outcome, or show the service's problems next to the form it came from.

Access is asked before anything else: a refused change is the 403 page, never a flash that
looks like a validation problem."""
from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict
from wtforms.fields.choices import SelectChoice

from app import access
from app.extensions import db
from app.models import PipelineVersion, Plugin, Project, Registry, Service
from app.services import (
    audit,
    pipeline_diff,
    pipeline_yaml,
    pipelines,
    plugins,
    registries,
    service_catalog,
)
from app.services.errors import NotFound, ServiceError
from app.ui import bp
from app.ui.catalog_forms import (
    PipelineImportForm,
    PluginForm,
    RegistryEditForm,
    RegistryForm,
    ServiceForm,
    TagSearchForm,
    plugin_data,
    plugin_values,
    registry_changes,
    registry_credentials,
    service_data,
    service_values,
)
from app.ui.forms import EmptyForm
from app.ui.pages import _actor

VERSIONS_PER_PAGE = 20


def _load(model, obj_id, action="view", doing=None):
    """The object if the user may see it (404 otherwise, as if it did not exist); then the
    action, refused as a 403 that names `doing` ("delete") when given."""
    try:
        obj = access.get_visible(current_user, model, obj_id)
    except NotFound:
        abort(404)
    access.require(current_user, action, obj, doing)
    return obj


def _refused(exc):
    """A service refused: nothing it began may stay in the session."""
    db.session.rollback()
    return exc.fields, exc.message, exc.status


def _deleted(call, ok, back, done):
    """Delete through `call`; a refusal (e.g. 409 in use) is a flash on the object's page."""
    try:
        call()
    except ServiceError as exc:
        _refused(exc)
        flash(exc.message, "error")
        return redirect(back)
    flash(ok, "ok")
    return redirect(done)


def _registry_choices(form):
    rows = db.session.scalars(access.visible(current_user, Registry)
                              .order_by(Registry.is_default.desc(), Registry.name))
    form.registry_id.choices = [SelectChoice(r.id, r.name) for r in rows]
    return form


def _users_of(model):
    """{registry id: how many rows of `model` use it}."""
    return dict(db.session.execute(select(model.registry_id, func.count()).group_by(model.registry_id)).all())


# --- registries ---------------------------------------------------------------------------------
def _registries_page(form, errors=None, message=None, status=200):
    rows = db.session.scalars(select(Registry).order_by(Registry.is_default.desc(), Registry.name)).all()
    return render_template("admin/registries.html", registries=rows, form=form, errors=errors or {},
                           message=message, services=_users_of(Service), plugins=_users_of(Plugin)), status


@bp.get("/registries")
def registry_list():
    access.require_admin(current_user, "manage registries")
    return _registries_page(RegistryForm())


@bp.post("/registries")
def registry_create():
    access.require(current_user, "create", Registry)
    form = RegistryForm()
    try:
        registry = registries.create(_actor(), (form.name.data or "").strip(),
                                     (form.url.data or "").strip(), *registry_credentials(form))
    except ServiceError as exc:
        return _registries_page(form, *_refused(exc))
    flash(f"Registry {registry.name} added.", "ok")
    return redirect(url_for("ui.registry_detail", registry_id=registry.id))


def _registry_page(registry, form, errors=None, message=None, status=200):
    search = TagSearchForm(request.args)
    tags = tags_error = None
    if request.method == "GET" and search.repository.data:
        try:
            tags = registries.list_tags(registry, search.repository.data.strip(),
                                        (search.pattern.data or "").strip() or None)
        except ServiceError as exc:
            tags_error = exc
    return render_template(
        "admin/registry.html", registry=registry, form=form, errors=errors or {}, message=message,
        search=search, tags=tags, tags_error=tags_error, empty=EmptyForm(),
        used_services=_users_of(Service).get(registry.id, 0),
        used_plugins=_users_of(Plugin).get(registry.id, 0),
    ), status


@bp.get("/registries/<int:registry_id>")
def registry_detail(registry_id):
    registry = _load(Registry, registry_id, "manage")
    return _registry_page(registry, RegistryEditForm(data={"name": registry.name, "url": registry.url}))


@bp.post("/registries/<int:registry_id>")
def registry_update(registry_id):
    registry = _load(Registry, registry_id, "manage", "change")
    form = RegistryEditForm()
    try:
        registries.update(_actor(), registry, **registry_changes(form))
    except ServiceError as exc:
        problems = _refused(exc)
        return _registry_page(db.session.get(Registry, registry_id), form, *problems)
    flash(f"Registry {registry.name} saved.", "ok")
    return redirect(url_for("ui.registry_detail", registry_id=registry.id))


@bp.post("/registries/<int:registry_id>/delete")
def registry_delete(registry_id):
    registry = _load(Registry, registry_id, "manage", "delete")
    return _deleted(lambda: registries.delete(_actor(), registry), f"Registry {registry.name} deleted.",
                    url_for("ui.registry_detail", registry_id=registry_id), url_for("ui.registry_list"))


# --- services -----------------------------------------------------------------------------------
@bp.get("/services")
def service_list():
    rows = db.session.scalars(access.visible(current_user, Service).order_by(Service.name)).all()
    return render_template("admin/services.html", services=rows,
                           can_create=access.can(current_user, "create", Service))


def _item_page(kind, item, form, errors=None, message=None, status=200):
    """A service's or plugin's page (admin/<kind>.html); `item` None: the form for a new one."""
    can_manage = access.can(current_user, "manage", item) if item else True
    return render_template(
        f"admin/{kind}.html", **{kind: item}, can_manage=can_manage, errors=errors or {},
        message=message, form=_registry_choices(form) if can_manage else None, empty=EmptyForm(),
    ), status


def _service_page(service, form, *problems, **options):
    return _item_page("service", service, form, *problems, **options)


@bp.get("/services/new")
def service_new():
    access.require(current_user, "create", Service)
    return _service_page(None, ServiceForm())


@bp.post("/services")
def service_create():
    access.require(current_user, "create", Service)
    form = _registry_choices(ServiceForm())
    try:
        values = service_values(form)
        service = service_catalog.create(_actor(), values.pop("name"), values.pop("registry_id"),
                                         values.pop("image"), **values)
    except ServiceError as exc:
        return _service_page(None, form, *_refused(exc))
    flash(f"Service {service.name} added.", "ok")
    return redirect(url_for("ui.service_detail", service_id=service.id))


@bp.get("/services/<int:service_id>")
def service_detail(service_id):
    service = _load(Service, service_id)
    return _service_page(service, ServiceForm(data=service_data(service)))


@bp.post("/services/<int:service_id>")
def service_update(service_id):
    service = _load(Service, service_id, "manage", "change")
    form = ServiceForm()
    try:
        service_catalog.update(_actor(), service, **service_values(form))
    except ServiceError as exc:
        problems = _refused(exc)
        return _service_page(db.session.get(Service, service_id), form, *problems)
    flash(f"Service {service.name} saved; pipeline versions saved from now on use it.", "ok")
    return redirect(url_for("ui.service_detail", service_id=service.id))


@bp.post("/services/<int:service_id>/delete")
def service_delete(service_id):
    service = _load(Service, service_id, "manage", "delete")
    return _deleted(lambda: service_catalog.delete(_actor(), service), f"Service {service.name} deleted.",
                    url_for("ui.service_detail", service_id=service_id), url_for("ui.service_list"))


# --- plugins ------------------------------------------------------------------------------------
@bp.get("/plugins")
def plugin_list():
    rows = db.session.scalars(access.visible(current_user, Plugin).order_by(Plugin.name)).all()
    return render_template("admin/plugins.html", plugins=rows,
                           can_create=access.can(current_user, "create", Plugin))


def _plugin_page(plugin, form, *problems, **options):
    return _item_page("plugin", plugin, form, *problems, **options)


@bp.get("/plugins/new")
def plugin_new():
    access.require(current_user, "create", Plugin)
    return _plugin_page(None, PluginForm())


@bp.post("/plugins")
def plugin_create():
    access.require(current_user, "create", Plugin)
    form = PluginForm()
    try:
        values = plugin_values(form)
        plugin = plugins.create(_actor(), values.pop("name"), values.pop("registry_id"),
                                values.pop("image"), values.pop("tag"), **values)
    except ServiceError as exc:
        return _plugin_page(None, form, *_refused(exc))
    flash(f"Plugin {plugin.name} added; every enabled node pulls its image.", "ok")
    return redirect(url_for("ui.plugin_detail", plugin_id=plugin.id))


@bp.get("/plugins/<int:plugin_id>")
def plugin_detail(plugin_id):
    plugin = _load(Plugin, plugin_id)
    return _plugin_page(plugin, PluginForm(data=plugin_data(plugin)))


@bp.post("/plugins/<int:plugin_id>")
def plugin_update(plugin_id):
    plugin = _load(Plugin, plugin_id, "manage", "change")
    form = PluginForm()
    try:
        plugins.update(_actor(), plugin, **plugin_values(form))
    except ServiceError as exc:
        problems = _refused(exc)
        return _plugin_page(db.session.get(Plugin, plugin_id), form, *problems)
    flash(f"Plugin {plugin.name} saved; pipeline versions saved before keep the image they pinned.", "ok")
    return redirect(url_for("ui.plugin_detail", plugin_id=plugin.id))


@bp.post("/plugins/<int:plugin_id>/delete")
def plugin_delete(plugin_id):
    plugin = _load(Plugin, plugin_id, "manage", "delete")
    return _deleted(lambda: plugins.delete(_actor(), plugin), f"Plugin {plugin.name} deleted.",
                    url_for("ui.plugin_detail", plugin_id=plugin_id), url_for("ui.plugin_list"))


# --- a project's pipeline -----------------------------------------------------------------------
def _pipeline_page(project, form, errors=None, message=None, status=200):
    page = max(request.args.get("page", 1, type=int), 1)
    stmt = pipelines.versions(project, access.visible(current_user, PipelineVersion))
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = db.session.scalars(stmt.limit(VERSIONS_PER_PAGE).offset((page - 1) * VERSIONS_PER_PAGE)).all()
    latest = pipelines.latest_version(project)
    changes = None
    args = request.args if request.method == "GET" else MultiDict()
    number = args.get("diff", type=int)
    if number is not None:
        # ?diff=N: what version N changed since N-1; &against=M compares it with any version M.
        version = pipelines.get_version(project, number)  # none such: the 404 page
        against = args.get("against", type=int, default=number - 1)
        previous = pipelines.get_version(project, against) if against >= 1 else None
        changes = pipeline_diff.diff(version, previous)
    # ?version=N: the editor opens version N (read-only for viewers, a starting point for admins).
    shown = args.get("version", type=int)
    shown = pipelines.get_version(project, shown) if shown is not None else latest
    return render_template(
        "ui/pipeline.html", project=project, versions=rows, total=total, page=page,
        pages=max(1, -(-total // VERSIONS_PER_PAGE)), latest=latest, changes=changes, shown=shown,
        savers=audit.pipeline_savers(project.id, [v.number for v in rows if v.created_by is None]),
        latest_yaml=pipeline_yaml.export_yaml(latest) if latest else None,
        form=form if access.can(current_user, "manage", project) else None,
        errors=errors or {}, message=message,
    ), status


@bp.get("/projects/<int:project_id>/pipeline")
def project_pipeline(project_id):
    return _pipeline_page(_load(Project, project_id), PipelineImportForm())


@bp.post("/projects/<int:project_id>/pipeline/import")
def project_pipeline_import(project_id):
    project = _load(Project, project_id, "manage", "import a pipeline into")
    form = PipelineImportForm()
    try:
        version = pipeline_yaml.import_yaml(_actor(), project, (form.yaml.data or "").encode())
    except ServiceError as exc:
        problems = _refused(exc)
        return _pipeline_page(db.session.get(Project, project_id), form, *problems)
    flash(f"Pipeline version {version.number} of {project.name} saved.", "ok")
    return redirect(url_for("ui.project_pipeline", project_id=project_id))
