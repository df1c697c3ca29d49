"""Error handling for the whole app: services raise typed errors, this turns them into the
API's error document or the UI's error page."""
from flask import current_app, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from app.api.core import bp as api_bp
from app.api.core import error_response
from app.extensions import db
from app.services.errors import ServiceError


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
