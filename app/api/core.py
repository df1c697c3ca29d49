"""The API's plumbing: operation registry, request parsing, errors, authentication.

Every route is declared with `operation(...)`, which records its schemas; the same pydantic
models validate requests and generate /api/v1/openapi.json, so the two cannot drift apart.
"""
from dataclasses import dataclass, field
from functools import wraps

from flask import Blueprint, Response, g, jsonify, request
from flask_login import current_user
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from sqlalchemy import bindparam, func, select

from app import access
from app.extensions import csrf, db
from app.services import auth
from app.services.errors import ServiceError, Unauthorized

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # checked below for cookie sessions only; bearer calls carry no cookie

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Query parameter names that look like credentials: refused so tokens never sit in URLs or logs.
URL_CREDENTIAL_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "auth", "bearer"})


@dataclass
class Operation:
    method: str
    rule: str
    endpoint: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    errors: tuple = field(default_factory=tuple)
    scope: str = "admin"


OPERATIONS: list[Operation] = []
_BY_ENDPOINT: dict[str, Operation] = {}


def operation(method, rule, *, summary, tag, body=None, query=None, response=None, status=200,
              public=False, scope=None):
    """Register a view as an API operation; parsed input arrives as `data` and `params`.

    `scope`: the narrowest API token scope that may call it (issue 17 item 3). Reads need
    read-only, everything else admin unless it says otherwise (the deployment lifecycle says
    deploy); authenticate() asks the access module before the view runs."""
    if scope is None:
        scope = "read-only" if method in SAFE_METHODS else "admin"

    def decorator(fn):
        endpoint = fn.__name__

        @wraps(fn)
        def view(**kwargs):
            if body is not None:
                kwargs["data"] = _parse(body, _json_body(), "body")
            if query is not None:
                kwargs["params"] = _parse(query, request.args.to_dict(), "query")
            result = fn(**kwargs)
            if result is None:
                return "", 204
            if isinstance(result, Response):  # a view that answers in another format (YAML)
                return result
            # pydantic's encoder: several times faster than the json module on list pages, and
            # it writes datetimes left in a result as the schemas' dumps do (ISO 8601, "Z").
            return Response(to_json(result), status, mimetype="application/json")

        bp.add_url_rule(rule, endpoint=endpoint, view_func=view, methods=[method])
        op = Operation(method, rule, endpoint, summary, tag, body, query, response, status, public,
                       scope=scope)
        OPERATIONS.append(op)
        _BY_ENDPOINT[f"api.{endpoint}"] = op
        return view

    return decorator


class ApiError(ServiceError):
    def __init__(self, status, code, message, fields=None):
        super().__init__(message, fields)
        self.status = status
        self.code = code


def _json_body():
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise ApiError(400, "malformed_json", "the request body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    return data


_ERROR_HINTS = {
    "extra_forbidden": "unknown field: remove it",
    "missing": "this field is required",
}


def _parse(model, data, where):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = {}
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or where
            fields[name] = _ERROR_HINTS.get(err["type"], err["msg"])
        first = next(iter(fields.items()))
        raise ApiError(
            422, "validation_failed", f"invalid {where}: {first[0]}: {first[1]}", fields
        ) from None


def dump(schema, obj):
    return schema.model_validate(obj, from_attributes=True).model_dump(mode="json")


class PageQuery:
    """A list's count and page selects, built once from a select of its rows (and, optionally,
    `shown`, which turns the page's select into the one to run: to join what a page shows after
    the limit, not before). Building statements costs more CPU than running these; routes on the
    hot path keep one per shape of query and pass the values at each call. A page of plain rows
    carries the count as a column `page_total` (one round trip less), read apart only when the
    page is empty."""

    def __init__(self, stmt, shown=None):
        self.count = select(func.count()).select_from(stmt.order_by(None).subquery())
        page = stmt.limit(bindparam("page_limit")).offset(bindparam("page_offset"))
        self.entity = shown is None and len(page.column_descriptions) == 1
        if not self.entity:
            page = (shown(page) if shown is not None else page).add_columns(
                self.count.scalar_subquery().label("page_total"))
        self.page = page


def paginate(stmt, params, schema=None, shape=None, values=None):
    """A page of rows shaped by `schema` (or by the function `shape`, for responses that depend
    on the caller; with neither, the rows as they are), and the count of all rows. `stmt`: a
    select of the rows or a PageQuery; `values`: its bind parameters. A select of one entity
    yields its objects, of columns rows."""
    query = stmt if isinstance(stmt, PageQuery) else PageQuery(stmt)
    values = {**(values or {}), "page_limit": params.per_page,
              "page_offset": (params.page - 1) * params.per_page}
    if query.entity:
        total = db.session.scalar(query.count, values)
        rows = db.session.scalars(query.page, values).all()
    else:
        # Plain rows need none of the ORM's work on a statement: the session's connection runs
        # them (the same transaction) for a third less CPU.
        rows = db.session.connection().execute(query.page, values).all()
        total = rows[0].page_total if rows else db.session.connection().scalar(query.count, values)
    return {
        "items": [shape(row) for row in rows] if shape is not None
        else [dump(schema, row) for row in rows] if schema is not None else rows,
        "page": params.page,
        "per_page": params.per_page,
        "total": total,
    }


def error_response(status, code, message, fields=None, headers=None):
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def public_endpoints():
    return {f"api.{op.endpoint}" for op in OPERATIONS if op.public}


@bp.before_request
def authenticate():
    if URL_CREDENTIAL_PARAMS & {k.lower() for k in request.args}:
        raise ApiError(
            400, "credentials_in_url",
            "credentials are never accepted in a URL; send Authorization: Bearer <token>",
        )
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise Unauthorized("use the header Authorization: Bearer <token>")
        # Flask-Login reads the request's user from g._login_user; setting it authenticates
        # this one request without creating a session cookie.
        token = auth.token_for_request(raw.strip())
        g._login_user = token.user
        g.api_token = token
        g.token_scope = token.scope
        g.auth_via = "token"
    elif current_user.is_authenticated:
        g.auth_via = "session"
        if request.method not in SAFE_METHODS:
            csrf.protect()  # cookie sessions from the browser need the X-CSRFToken header
    if request.endpoint in public_endpoints():
        return None
    if not current_user.is_authenticated:
        raise Unauthorized("log in, or send Authorization: Bearer <token>")
    op = _BY_ENDPOINT.get(request.endpoint)
    if op is not None:
        access.require_scope(op.scope, f"{request.method} {request.path}")
    return None
