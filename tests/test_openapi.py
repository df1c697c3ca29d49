"""The OpenAPI document comes from the schemas that validate requests."""
from openapi_spec_validator import validate

from app.api.core import OPERATIONS


def test_document_is_valid_openapi_and_lists_every_operation(client):
    document = client.get("/api/v1/openapi.json").json
    validate(document)
    listed = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert len(listed) == len(OPERATIONS)
    assert ("POST", "/api/v1/teams/{team_id}/members/{user_id}") not in listed
    assert ("PUT", "/api/v1/teams/{team_id}/members/{user_id}") in listed


def test_request_schemas_in_the_document_are_the_validating_ones(client):
    schemas = client.get("/api/v1/openapi.json").json["components"]["schemas"]
    team = schemas["TeamCreate"]
    assert team["additionalProperties"] is False and team["required"] == ["name"]
    assert team["properties"]["name"]["maxLength"] == 64
    assert "value" not in schemas["SecretOut"]["properties"]  # write-only, never returned
