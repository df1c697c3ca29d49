"""Pipeline versions: what the API takes and answers. The definition's own rules (nodes, edges,
references, plugin parameters) live in app/services/pipelines.py, shared with YAML import."""
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas import Query, Request, Response
from app.services.pipelines import COMMENT_MAX

DEFINITION_HELP = (
    "{nodes: [{id, service | plugin, env (services), params (plugins), position}], "
    "edges: [{from, to}]}; values may refer to ${secrets.NAME}, ${services.ID.host|port|url} "
    "and ${steps.ID.outputs.KEY} of an upstream plugin node"
)


class PipelineSave(Request):
    definition: dict[str, Any] = Field(description=DEFINITION_HELP)
    comment: str = Field("", max_length=COMMENT_MAX)


class Author(Response):
    id: int
    username: str


class PipelineVersionOut(Response):
    project_id: int
    number: int
    comment: str
    created_by: Author | None = Field(description="null when the user was deleted")
    created_at: datetime


class PipelineVersionDetail(PipelineVersionOut):
    definition: dict[str, Any] = Field(description="What the admin wrote")
    resolved: dict[str, Any] = Field(
        description="The steps as they run: services and plugins copied from the catalog when saved")


class DiffQuery(Query):
    against: int | None = Field(None, ge=1, description="Default: the previous version")


class ExportQuery(Query):
    version: int | None = Field(None, ge=1, description="Default: the latest version")


class FieldChange(BaseModel):
    field: str = Field(description="Dotted path, e.g. env.DATABASE_URL or tag")
    before: Any = None
    after: Any = None


class NodeChange(BaseModel):
    id: str
    definition: list[FieldChange] = Field(description="Changes in what the admin wrote")
    resolved: list[FieldChange] = Field(
        description="Changes in what runs (e.g. a plugin tag pinned differently, a service's image)")


class NodeChanges(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[NodeChange]


class Edge(BaseModel):
    from_: str = Field(alias="from")
    to: str


class EdgeChanges(BaseModel):
    added: list[Edge]
    removed: list[Edge]


class PipelineDiff(BaseModel):
    number: int
    against: int | None = Field(description="null: compared with an empty pipeline")
    nodes: NodeChanges
    edges: EdgeChanges
