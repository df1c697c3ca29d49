"""Services and plugins: what admins send and what everyone reads. The schemas check types
and simple bounds; app/services/service_catalog.py and app/services/plugins.py check the rest
(and the same bounds again, for the UI and the CLI)."""
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator

from app.api.schemas import Id, Request, Response
from app.models.catalog import DEFAULT_PLUGIN_TIMEOUT_S
from app.services.names import DNS_LABEL_PATTERN
from app.services.plugins import CPUS_RANGE, MEMORY_MB_RANGE, TIMEOUT_S_RANGE
from app.services.service_catalog import PORTS_MAX, TAG_PATTERN

_NAME = {"pattern": DNS_LABEL_PATTERN, "max_length": 63,
         "description": "A DNS label: it names the service's host in deployment URLs"}
_DESCRIPTION = {"max_length": 500}
_IMAGE = {"min_length": 1, "max_length": 255,
          "description": "The repository in the registry, without a tag: e.g. team/shop-web or postgres"}
_TAG = {"pattern": TAG_PATTERN, "max_length": 128, "description": "A Docker tag, e.g. 1.25 or v2.0.1"}
_TAG_PATTERN = {"max_length": 128,
                "description": "Selectable only: a glob over tags users may choose (features-*, v*); "
                               "null offers every tag"}
# The service layer checks ports (with its own messages, shared with the UI); the document states
# the same bounds so clients and fuzzers know them.
PortList = Annotated[list[int], WithJsonSchema(
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
     "maxItems": PORTS_MAX, "uniqueItems": True}, mode="validation")]
_PORTS = {"description": f"Container ports the service listens on (1-65535, at most {PORTS_MAX})"}
_EXPOSED = {"description": "Those of `ports` the ingress publishes at the service's URL"}
_ENV = {"description": "NAME: value. Values are plain text up to 4 KiB; ${secrets.NAME}, "
                       "${services.ID.host} and ${steps.ID.outputs.KEY} are filled in at deploy time"}
_COMMAND = {"description": "Arguments replacing the image's command; null keeps the image's own"}
_HEALTH_CHECK = {"description": 'The readiness check, e.g. {"type": "http", "port": 8000, '
                                '"path": "/health"}, '
                                '{"type": "tcp", "port": 5432}, {"type": "log", "pattern": "ready"}, '
                                '{"type": "exec", "command": ["pg_isready"]} or {"type": "running"}; '
                                'optional timeout_s. null: running is enough'}
TagMode = Literal["pinned", "selectable"]


def _not_null(cls, value):
    # Runs only for fields the caller sent: null is refused, leaving the field out keeps it.
    if value is None:
        raise ValueError("cannot be null; leave the field out to keep it")
    return value


# Services
class ServiceCreate(Request):
    name: str = Field(**_NAME)
    description: str = Field("", **_DESCRIPTION)
    registry_id: Id
    image: str = Field(**_IMAGE)
    tag_mode: TagMode = "pinned"
    tag: str | None = Field(None, **_TAG)
    tag_pattern: str | None = Field(None, **_TAG_PATTERN)
    ports: PortList = Field(default_factory=list, **_PORTS)
    exposed_ports: PortList = Field(default_factory=list, **_EXPOSED)
    env: dict[str, str] = Field(default_factory=dict, **_ENV)
    command: list[str] | None = Field(None, **_COMMAND)
    health_check: dict | None = Field(None, **_HEALTH_CHECK)


class ServiceUpdate(Request):
    """Only what is given changes; null clears tag, tag_pattern, command and health_check.
    Switching tag_mode drops the other mode's tag or pattern unless the request sets it."""

    name: str | None = Field(None, **_NAME)
    description: str | None = Field(None, **_DESCRIPTION)
    registry_id: Id | None = None
    image: str | None = Field(None, **_IMAGE)
    tag_mode: TagMode | None = None
    tag: str | None = Field(None, **_TAG)
    tag_pattern: str | None = Field(None, **_TAG_PATTERN)
    ports: PortList | None = Field(None, **_PORTS)
    exposed_ports: PortList | None = Field(None, **_EXPOSED)
    env: dict[str, str] | None = Field(None, **_ENV)
    command: list[str] | None = Field(None, **_COMMAND)
    health_check: dict | None = Field(None, **_HEALTH_CHECK)

    not_null = field_validator("name", "description", "registry_id", "image", "tag_mode", "ports",
                               "exposed_ports", "env")(classmethod(_not_null))


class ServiceOut(Response):
    id: int
    name: str
    description: str
    registry_id: int
    image: str
    tag_mode: TagMode
    tag: str | None
    tag_pattern: str | None
    ports: list[int]
    exposed_ports: list[int]
    env: dict[str, str]
    command: list[str] | None
    health_check: dict | None
    created_at: datetime
    updated_at: datetime


# Plugins
_CPUS = {"ge": CPUS_RANGE[0], "le": CPUS_RANGE[1], "description": "CPUs for one run of the plugin"}
_MEMORY_MB = {"ge": MEMORY_MB_RANGE[0], "le": MEMORY_MB_RANGE[1],
              "description": "Memory (MB) for one run of the plugin"}
_TIMEOUT_S = {"ge": TIMEOUT_S_RANGE[0], "le": TIMEOUT_S_RANGE[1],
              "description": "A run that takes longer fails (seconds)"}
_ROLLBACK = {"description": "Whether the plugin runs again with action \"rollback\" when the deployment "
                          "is rolled back or deleted (for what it made outside the deployment)"}
_NETWORK = {"description": "Whether the plugin joins the deployment's network (to reach its services)"}
_PARAMS_SCHEMA = {"description": "A JSON Schema (draft 2020-12) of the params a pipeline step gives; "
                                 "{} accepts any"}


class PluginCreate(Request):
    name: str = Field(**_NAME)
    description: str = Field("", **_DESCRIPTION)
    registry_id: Id
    image: str = Field(**_IMAGE)
    tag: str = Field(**_TAG)
    params_schema: dict = Field(default_factory=dict, **_PARAMS_SCHEMA)
    cpus: float = Field(0.5, **_CPUS)
    memory_mb: int = Field(256, **_MEMORY_MB)
    timeout_s: int = Field(DEFAULT_PLUGIN_TIMEOUT_S, **_TIMEOUT_S)
    network: bool = Field(False, **_NETWORK)
    rollback: bool = Field(False, **_ROLLBACK)


class PluginUpdate(Request):
    """Only what is given changes. A new image, tag or registry is pulled on every enabled node;
    existing pipeline versions keep the image they pinned."""

    name: str | None = Field(None, **_NAME)
    description: str | None = Field(None, **_DESCRIPTION)
    registry_id: Id | None = None
    image: str | None = Field(None, **_IMAGE)
    tag: str | None = Field(None, **_TAG)
    params_schema: dict | None = Field(None, **_PARAMS_SCHEMA)
    cpus: float | None = Field(None, **_CPUS)
    memory_mb: int | None = Field(None, **_MEMORY_MB)
    timeout_s: int | None = Field(None, **_TIMEOUT_S)
    network: bool | None = Field(None, **_NETWORK)
    rollback: bool | None = Field(None, **_ROLLBACK)

    not_null = field_validator(*PluginCreate.model_fields)(classmethod(_not_null))


class PluginOut(Response):
    id: int
    name: str
    description: str
    registry_id: int
    image: str
    tag: str
    params_schema: dict
    cpus: float
    memory_mb: int
    timeout_s: int
    network: bool
    rollback: bool
    created_at: datetime
    updated_at: datetime
