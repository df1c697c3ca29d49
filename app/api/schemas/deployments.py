"""Deployments: requests and responses."""
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import Id, Pagination, Query, Request, Response
from app.services.deployments import TAIL_MAX
from app.services.names import DNS_LABEL_HINT
from app.states import DEPLOYMENT_STATUSES

_NAME = {"min_length": 1, "max_length": 63,
         "description": f"Unique among the environment's deployments: {DNS_LABEL_HINT}"}
_TAGS = {"max_length": 100,
         "description": "{step id: tag} for the service steps whose tag mode is selectable; "
                        "pinned steps are left out (GET /projects/{id}/deploy-options lists them)"}


class DeploymentCreate(Request):
    project_id: Id
    environment_id: Id
    name: str = Field(**_NAME)
    tags: dict[str, str] = Field(default_factory=dict, **_TAGS)


class DeploymentClone(Request):
    name: str = Field(**_NAME)
    tags: dict[str, str] | None = Field(
        None, max_length=100, description="Tags to change; the others are the source's")


class DeploymentQuery(Pagination):
    project_id: Id | None = None
    environment_id: Id | None = None
    status: Literal[DEPLOYMENT_STATUSES] | None = None
    include_deleted: bool = Field(False, description="Deleted ones too (status=deleted implies it)")


class LogsQuery(Query):
    step: str = Field(min_length=1, max_length=63, description="A step id of the deployment")
    tail: int = Field(200, ge=1, le=TAIL_MAX)


class Ref(BaseModel):
    id: int
    name: str


class UserRef(BaseModel):
    id: int
    username: str


class DeploymentOut(Response):
    id: int
    name: str
    project: Ref
    environment: Ref
    node: Ref | None
    pipeline_version: int
    tags: dict[str, str] = Field(description="{step id: tag} of every service step")
    cpus: float = Field(description="Reserved on the node: the project's limit at creation")
    memory_mb: int
    status: Literal[DEPLOYMENT_STATUSES]
    status_message: str
    status_changed_at: datetime
    progress: dict
    urls: dict[str, str] = Field(description="{step id: stable URL} of the exposed services")
    created_by: UserRef | None
    created_at: datetime
    last_activity_at: datetime
    expires_at: datetime | None = Field(description="Auto-cleanup time; null once deleting")
    remaining_seconds: int | None = Field(description="Until auto-cleanup; null once deleting")
    cloned_from_id: int | None
    delete_requested_at: datetime | None
    deleted_at: datetime | None


class EventOut(Response):
    id: int
    at: datetime
    kind: str
    actor: UserRef | None
    message: str
    data: dict | None


class StepOption(BaseModel):
    step_id: str
    service: str
    tag_mode: Literal["pinned", "selectable"]
    tag: str | None = Field(description="The tag of a pinned step")
    tag_pattern: str | None = Field(description="The glob a selectable step's tags match")


class DeployOptions(BaseModel):
    pipeline_version: int | None = Field(description="The latest version; null: no pipeline yet")
    steps: list[StepOption]


class StepTags(BaseModel):
    step_id: str
    pattern: str | None
    tags: list[str] = Field(description="Version-looking tags newest first, then the others")


class LogsOut(BaseModel):
    step: str
    lines: list[str]


class ContainerSample(BaseModel):
    step_id: str | None
    role: str | None
    name: str
    cpu_percent: float | None = Field(description="Null on the node's first sample of it")
    memory_usage: int | None
    memory_limit: int | None


class MetricsOut(BaseModel):
    at: datetime
    containers: list[ContainerSample]


class ServiceHealth(BaseModel):
    health: Literal["waiting", "starting", "ready", "failing", "restarting", "unknown", "stopped",
                    "removing", "removed"]
    message: str | None = Field(description="The agent's last word on it (a failing readiness "
                                            "probe's message, why it restarts)")
    restarts: int = Field(description="Restarts and recreations by the agent, in the history kept")


class DeploymentLive(BaseModel):
    id: int
    status: Literal[DEPLOYMENT_STATUSES]
    status_message: str
    status_changed_at: datetime
    steps: dict[str, str] = Field(
        description="{step id: state}: a service's health, a plugin's progress (pending, running, "
                    "done, failed, skipped, cancelled); steps not started yet are left out")
    services: dict[str, ServiceHealth]
