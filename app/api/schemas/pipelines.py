"""Pipeline versions: what the API takes and answers. The definition's own rules (nodes, edges,
references, plugin parameters) live in app/services/pipelines.py, shared with YAML import."""
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas import ID_MAX, Query, Request, Response
from app.services.pipelines import COMMENT_MAX

DEFINITION_HELP = (
    "{nodes: [{id, service | plugin, env and secret_files (services), params (plugins), position}], "
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
    against: int | None = Field(None, ge=1, le=ID_MAX, description="Default: the previous version")


class ExportQuery(Query):
    version: int | None = Field(None, ge=1, le=ID_MAX, description="Default: the latest version")


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


class EditorService(BaseModel):
    name: str
    description: str
    ports: list[int]
    exposed_ports: list[int] = Field(description="Published for the ingress at the service's URL")
    env: dict[str, str] = Field(description="The catalog's env; a node's env is merged over it")
    health_check: dict[str, Any] | None = Field(description="Readiness; null: running is enough")
    tag_mode: str


class EditorPlugin(BaseModel):
    name: str
    description: str
    image: str
    tag: str
    params_schema: dict[str, Any] = Field(description="The JSON Schema a node's params must pass")


class PipelineEditorData(BaseModel):
    project_id: int
    can_manage: bool = Field(description="Whether this user may save versions (admins)")
    latest: int | None = Field(description="The latest version's number; null: none yet")
    services: list[EditorService]
    plugins: list[EditorPlugin]
    secrets: list[str] = Field(
        description="The project's secret names for ${secrets.NAME} (empty unless can_manage)")
    service_attributes: list[str] = Field(description="What ${services.ID.ATTR} may name")
