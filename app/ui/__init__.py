"""Server-rendered pages (Jinja, htmx). Every page asks the access module like the API does."""
from flask import Blueprint, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("ui", __name__, template_folder="../templates")
PUBLIC_ENDPOINTS = frozenset({"ui.login", "static"})


@bp.before_request
def require_login():
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    return redirect(url_for("ui.login", next=request.full_path if request.query_string else request.path))


from app.ui import catalog, deployments, environments, pages  # noqa: E402,F401
