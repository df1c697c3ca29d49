"""The OpenAPI 3.1 document, generated from the operation registry and its pydantic models."""
import re

from pydantic.json_schema import models_json_schema

from agent.spec import ID_PATTERN as STEP_ID_PATTERN
from app import __version__
from app.api.core import OPERATIONS, operation
from app.api.schemas import ErrorDocument
from app.routing import ID_MAX
from app.services.names import SECRET_NAME_PATTERN

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
REF_TEMPLATE = "#/components/schemas/{model}"


def _path(rule):
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule)


# What the routes' converters match: `int` is an id (app/routing.py), the default converter any
# text without a slash.
_CONVERTER_SCHEMAS = {
    "int": {"type": "integer", "minimum": 0, "maximum": ID_MAX},
    "": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}


# Text path parameters whose values follow a known pattern.
_NAMED_SCHEMAS = {
    "name": {"type": "string", "pattern": SECRET_NAME_PATTERN},  # /projects/{id}/secrets/{name}
    "step_id": {"type": "string", "pattern": STEP_ID_PATTERN.pattern},
}


def _path_params(rule):
    return [
        {"name": name, "in": "path", "required": True,
         "schema": dict(_NAMED_SCHEMAS.get(name) if not conv and name in _NAMED_SCHEMAS
                        else _CONVERTER_SCHEMAS[conv])}
        for conv, name in _PARAM.findall(rule)
    ]


def build_document():
    models = {ErrorDocument}
    for op in OPERATIONS:
        models.update(m for m in (op.body, op.response) if m is not None)
    keyed, defs = models_json_schema(
        [(m, "validation") for m in models],
        ref_template=REF_TEMPLATE,
    )
    schemas = defs.get("$defs", {})

    def ref(model):
        return keyed[(model, "validation")]

    error = {"description": "Error", "content": {"application/json": {"schema": ref(ErrorDocument)}}}
    paths = {}
    for op in OPERATIONS:
        entry = {
            "operationId": op.endpoint,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": _path_params(op.rule),
            "responses": {"default": error},
        }
        if op.query is not None:
            for name, field in op.query.model_fields.items():
                schema = op.query.model_json_schema()["properties"][name]
                entry["parameters"].append(
                    {"name": name, "in": "query", "required": field.is_required(), "schema": schema}
                )
        if op.body is not None:
            entry["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": ref(op.body)}}
            }
        ok = {"description": "Success"}
        if op.response is not None and op.status != 204:
            ok["content"] = {"application/json": {"schema": ref(op.response)}}
        entry["responses"][str(op.status)] = ok
        if op.public:
            entry["security"] = []
        paths.setdefault(_path("/api/v1" + op.rule), {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "NullOps API", "version": __version__},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


_document = None


@operation("GET", "/openapi.json", summary="This API's OpenAPI document", tag="meta", public=True)
def openapi_document():
    global _document
    if _document is None:
        _document = build_document()
    return _document
