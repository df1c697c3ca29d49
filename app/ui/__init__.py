"""Server-rendered pages (Jinja, htmx). Every page asks the access module like the API does."""
from flask import Blueprint, redirect, request, url_for
from flask_login import current_user
from markupsafe import Markup

bp = Blueprint("ui", __name__, template_folder="../templates")
PUBLIC_ENDPOINTS = frozenset({"ui.login", "static"})


@bp.before_request
def require_login():
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    return redirect(url_for("ui.login", next=request.full_path if request.query_string else request.path))



@bp.app_template_global()
def island(name):
    """The stylesheet and script of a React island built by `make assets` (frontend/README.md)."""
    css = url_for("static", filename=f"build/{name}/main.css")
    js = url_for("static", filename=f"build/{name}/main.js")
    return Markup(f'<link rel="stylesheet" href="{css}">\n  <script src="{js}" defer></script>')


@bp.app_template_global()
def node_reason(node):
    """A node's status reason without its address for viewers who may not manage it."""
    from app.services.nodes import status_reason_for

    return status_reason_for(current_user, node)


from app.ui import (  # noqa: E402,F401
    audit,
    catalog,
    deployments,
    environments,
    fragments,
    pages,
    projects,
    provisioning,
    teams,
)
