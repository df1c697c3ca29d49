"""Error handling for the whole app: services raise typed errors, this turns them into the
API's error document or the UI's error page."""
from flask import current_app, g, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from app.api.core import bp as api_bp
from app.api.core import error_response
from app.extensions import db
from app.services import audit
from app.services.errors import ServiceError


def audit_refusal(message):
    """A refused attempt (403) goes into the audit log (issue 17 item 6): who tried what, and
    why it was refused. Its own transaction, after the refused work was rolled back; a failure
    to record is logged and never turns the 403 into a 500."""
    try:
        actor = current_user._get_current_object() if current_user.is_authenticated else None
        audit.record(actor, "access.refused", "request", target_name=request.path[:128], details={
            "method": request.method, "endpoint": request.endpoint or "",
            "reason": (message or "")[:300], "via": g.get("auth_via", "anonymous")})
        db.session.commit()
    except Exception:  # noqa: BLE001 (the 403 must still be answered)
        db.session.rollback()
        current_app.logger.exception("could not audit a refused %s %s", request.method, request.path)


def register(app):
    """JSON errors under /api/, the error page elsewhere; never a stack trace."""

    def wants_json():
        return request.path.startswith(api_bp.url_prefix + "/") or request.path == api_bp.url_prefix

    @app.errorhandler(ServiceError)
    def service_error(exc):
        headers = {}
        if getattr(exc, "retry_after", None):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="nullops"'
        db.session.rollback()
        if exc.status == 403:
            audit_refusal(exc.message)
        if wants_json():
            return error_response(exc.status, exc.code, exc.message, exc.fields, headers)
        return render_template("error.html", status=exc.status, message=exc.message), exc.status, headers

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        message = "the CSRF token is missing or invalid; reload the page and try again"
        if wants_json():
            return error_response(400, "csrf_failed", message)
        return message, 400

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 403:
            db.session.rollback()
            audit_refusal(exc.description)
        if not wants_json():
            if exc.code in (404, 405):
                return render_template("error.html", status=exc.code, message=exc.description), exc.code
            return exc
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported"}
        message = {404: "no such resource", 405: f"method {request.method} is not allowed here"}.get(
            exc.code, exc.description
        )
        return error_response(exc.code, codes.get(exc.code, "http_error"), message)

    @app.errorhandler(Exception)
    def unexpected(exc):
        db.session.rollback()
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return error_response(500, "internal_error", "an internal error occurred; see the server log")
        return render_template("error.html", status=500,
                               message="An internal error occurred; see the server log."), 500
