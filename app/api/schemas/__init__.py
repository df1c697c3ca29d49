"""Request and response schemas. Requests are strict: unknown fields and wrong types fail."""
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.models.catalog import (
    DEFAULT_CLEANUP_MINUTES,
    DEFAULT_CPU_OVERCOMMIT,
    DEFAULT_PROJECT_CPUS,
    DEFAULT_PROJECT_MEMORY_MB,
)
from app.routing import ID_MAX
from app.services.catalog import (
    CLEANUP_MINUTES_MAX,
    CLEANUP_MINUTES_MIN,
    CPU_OVERCOMMIT_RANGE,
    PROJECT_CPUS_RANGE,
    PROJECT_MEMORY_MB_RANGE,
    SECRET_MAX_BYTES,
)
from app.services.names import (
    DNS_LABEL_PATTERN,
    DNS_NAME_MAX,
    DNS_NAME_PATTERN,
    HOST_MAX,
    SECRET_NAME_PATTERN,
    TEAM_NAME_PATTERN,
    USERNAME_PATTERN,
)
from app.services.passwords import MAX_LENGTH as PASSWORD_MAX
from app.services.registries import NAME_PATTERN as REGISTRY_NAME_PATTERN
from app.states import NODE_STATUSES

# An id a caller sends (body or query): what an id column can hold. Larger numbers reached the
# database, which refused them with a 500 (issue 17 item 7); now they are a 422 naming the field,
# and the OpenAPI document says the bound. tests/security/test_fuzz_bounds.py checks that every
# integer a request takes has an upper bound.
Id = Annotated[int, Field(ge=1, le=ID_MAX)]
# A page whose offset ((page - 1) * per_page, per_page <= 100) still fits a 64-bit OFFSET.
PAGE_MAX = ID_MAX // 100


def _document_not_null(schema, model):
    """Fields a `not_null` validator refuses null for (PATCH bodies: leave a field out to keep
    it) are documented without the null their `X | None` type would give them: the document
    must not promise what the API refuses (issue 17 item 7)."""
    validator = model.__pydantic_decorators__.field_validators.get("not_null")
    for name in validator.info.fields if validator else ():
        prop = schema.get("properties", {}).get(name)
        if not prop or "anyOf" not in prop:
            continue
        branches = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
        if len(branches) == 1:
            prop.update(branches[0])
        else:
            prop["anyOf"] = branches
        prop.pop("default", None)


class _Input(BaseModel):
    @field_validator("*")
    @classmethod
    def no_nul(cls, value):
        # PostgreSQL cannot store or compare NUL in text: it reached the database and answered 500.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character: remove it")  # as pipeline definitions say
        return value


class Request(_Input):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_document_not_null)


class Query(_Input):
    # Query strings are text: let pydantic convert "2" to 2, but still refuse unknown keys.
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


T = TypeVar("T")


class Page(Response, Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int


class Pagination(Query):
    page: int = Field(1, ge=1, le=PAGE_MAX)
    per_page: int = Field(25, ge=1, le=100)


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str]


class ErrorDocument(BaseModel):
    error: ErrorBody


Role = Literal["admin", "user"]
Kind = Literal["person", "service"]
Scope = Literal["read-only", "deploy", "admin"]
_SCOPE = Field("admin", description="read-only: GET only; deploy: also create, clone, retry, extend "
               "and delete deployments; admin: everything the account may do. A token never makes "
               "a token of a wider scope")
Level = Literal["read_only", "full"]
Description = Field("", max_length=500)


# Users and tokens
class UserCreate(Request):
    username: str = Field(pattern=USERNAME_PATTERN, max_length=64)
    password: str | None = Field(None, max_length=PASSWORD_MAX,
                                 description="Required for a person; left out for a service account")
    role: Role = "user"
    full_name: str = Field("", max_length=120)
    kind: Kind = Field("person", description="service: an account for a CI pipeline; it never logs "
                       "in and uses the API tokens an admin issues for it (POST /users/{id}/tokens)")


class UserUpdate(Request):
    full_name: str | None = Field(None, max_length=120)
    role: Role | None = None
    is_active: bool | None = None


class ProfileUpdate(Request):
    full_name: str = Field(max_length=120)


class PasswordReset(Request):
    new_password: str = Field(max_length=PASSWORD_MAX)


class PasswordChange(PasswordReset):
    current_password: str = Field(max_length=PASSWORD_MAX)


class TeamRef(Response):
    id: int
    name: str


class UserOut(Response):
    id: int
    username: str
    full_name: str
    role: Role
    kind: Kind
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


class MeOut(UserOut):
    teams: list[TeamRef]


class TokenCreate(Request):
    name: str = Field(min_length=1, max_length=64)
    expires_in_days: int | None = Field(None, ge=1, le=3650,
                                        description="null: never expires (not from an expiring token)")
    scope: Scope = _SCOPE


LOGIN_TOKEN_DAYS_MAX = 90


class LoginTokenCreate(Request):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)
    name: str | None = Field(None, min_length=1, max_length=64,
                             description="Default: api-login- and a random suffix")
    expires_in_days: int = Field(1, ge=1, le=LOGIN_TOKEN_DAYS_MAX,
                                 description="Tokens from a login always expire")
    scope: Scope = _SCOPE


class TokenOut(Response):
    id: int
    name: str
    prefix: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret. Shown only in this response; store it now.")


# Teams and grants
class TeamCreate(Request):
    name: str = Field(pattern=TEAM_NAME_PATTERN, max_length=64)
    description: str = Description


class TeamUpdate(Request):
    name: str | None = Field(None, pattern=TEAM_NAME_PATTERN, max_length=64)
    description: str | None = Field(None, max_length=500)


class MemberOut(Response):
    id: int
    username: str
    full_name: str


class TeamOut(Response):
    id: int
    name: str
    description: str
    created_at: datetime


class TeamDetail(TeamOut):
    members: list[MemberOut]


class GrantCreate(Request):
    team_id: Id
    project_id: Id | None = None
    environment_id: Id | None = None
    level: Level

    @model_validator(mode="after")
    def one_target(self):
        if (self.project_id is None) == (self.environment_id is None):
            raise ValueError("give exactly one of project_id or environment_id")
        return self


class GrantUpdate(Request):
    level: Level


class GrantOut(Response):
    id: int
    team_id: int
    project_id: int | None
    environment_id: int | None
    level: Level
    created_at: datetime


class GrantQuery(Pagination):
    team_id: Id | None = None
    project_id: Id | None = None
    environment_id: Id | None = None


# Projects and environments
class TargetCreate(Request):
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    description: str = Description


class TargetUpdate(Request):
    name: str | None = Field(None, pattern=DNS_LABEL_PATTERN, max_length=63)
    description: str | None = Field(None, max_length=500)


class TargetOut(Response):
    id: int
    name: str
    description: str
    created_at: datetime


_BASE_DOMAIN = {
    "pattern": DNS_NAME_PATTERN, "max_length": DNS_NAME_MAX,
    "description": "Ingress host names are <service>.<deployment>.<environment>.<base_domain>",
}
_CLEANUP_MINUTES = {
    "ge": CLEANUP_MINUTES_MIN, "le": CLEANUP_MINUTES_MAX,
    "description": "Inactivity (minutes) after which a deployment is deleted; projects may override it",
}


_PROJECT_CPUS = {"ge": PROJECT_CPUS_RANGE[0], "le": PROJECT_CPUS_RANGE[1],
                 "description": "CPUs each deployment of the project may use (and admission reserves)"}
_PROJECT_MEMORY_MB = {"ge": PROJECT_MEMORY_MB_RANGE[0], "le": PROJECT_MEMORY_MB_RANGE[1],
                      "description": "Memory (MB) each deployment of the project may use "
                                     "(and admission reserves)"}
_CPU_OVERCOMMIT = {
    "ge": CPU_OVERCOMMIT_RANGE[0], "le": CPU_OVERCOMMIT_RANGE[1],
    "description": "How many times its CPUs the CPU limits of a node's deployments may add up to "
                   "(CPU is compressible; memory never is overcommitted); nodes may set their own",
}
_PROJECT_CLEANUP_MINUTES = {
    "ge": CLEANUP_MINUTES_MIN, "le": CLEANUP_MINUTES_MAX,
    "description": "Inactivity (minutes) after which the project's deployments are deleted; "
                   "null: the environment's cleanup_minutes",
}


class ProjectCreate(TargetCreate):
    cpus: float = Field(DEFAULT_PROJECT_CPUS, **_PROJECT_CPUS)
    memory_mb: int = Field(DEFAULT_PROJECT_MEMORY_MB, **_PROJECT_MEMORY_MB)
    cleanup_minutes: int | None = Field(None, **_PROJECT_CLEANUP_MINUTES)


class ProjectUpdate(TargetUpdate):
    """Only what is given changes; cleanup_minutes null goes back to the environment's default."""

    cpus: float | None = Field(None, **_PROJECT_CPUS)
    memory_mb: int | None = Field(None, **_PROJECT_MEMORY_MB)
    cleanup_minutes: int | None = Field(None, **_PROJECT_CLEANUP_MINUTES)

    @field_validator("cpus", "memory_mb")
    @classmethod
    def not_null(cls, value):
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value


class ProjectOut(TargetOut):
    cpus: float
    memory_mb: int
    cleanup_minutes: int | None = Field(description="null: the environment's cleanup_minutes applies")


class EnvironmentCreate(TargetCreate):
    base_domain: str = Field("localhost", **_BASE_DOMAIN)
    cleanup_minutes: int = Field(DEFAULT_CLEANUP_MINUTES, **_CLEANUP_MINUTES)
    cpu_overcommit: float = Field(DEFAULT_CPU_OVERCOMMIT, **_CPU_OVERCOMMIT)


class EnvironmentUpdate(TargetUpdate):
    base_domain: str | None = Field(None, **_BASE_DOMAIN)
    cleanup_minutes: int | None = Field(None, **_CLEANUP_MINUTES)
    cpu_overcommit: float | None = Field(None, **_CPU_OVERCOMMIT)


class EnvironmentOut(TargetOut):
    base_domain: str
    cleanup_minutes: int
    cpu_overcommit: float


class AccessOut(BaseModel):
    level: Literal["admin", "read_only", "full"] | None
    view: bool
    deploy: bool
    manage: bool


class SecretPut(Request):
    value: str = Field(min_length=1, description=f"At most {SECRET_MAX_BYTES} bytes in UTF-8",
                       json_schema_extra={"maxLength": SECRET_MAX_BYTES})


class SecretOut(Response):
    """A secret's name and dates; its value is write-only and never part of a response."""

    name: str = Field(pattern=SECRET_NAME_PATTERN)
    created_at: datetime
    updated_at: datetime


class SecretList(BaseModel):
    items: list[SecretOut]


# Nodes
_PORT = {"ge": 1, "le": 65535, "description": "The agent's TLS port on the host"}
_CPUS_OVERRIDE = {"ge": 0.1, "le": 1024, "description": "CPUs NullOps may allocate here; null: as reported"}
_MEMORY_OVERRIDE = {"ge": 64, "le": 16 * 1024 * 1024,
                    "description": "Memory (MB) NullOps may allocate here; null: as reported"}
MEMORY_RESERVE_MB_RANGE = (0, 1024 * 1024)
_NODE_CPU_OVERCOMMIT = {"ge": CPU_OVERCOMMIT_RANGE[0], "le": CPU_OVERCOMMIT_RANGE[1],
                        "description": "This node's CPU overcommit ratio; null: the environment's"}
_MEMORY_RESERVE = {"ge": MEMORY_RESERVE_MB_RANGE[0], "le": MEMORY_RESERVE_MB_RANGE[1],
                   "description": "Memory (MB) kept for the host (OS, Docker, agent): no deployment gets it"}


class NodeCreate(Request):
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    host: str = Field(min_length=1, max_length=HOST_MAX,
                      description="Host name or IP address the controller dials (no scheme, no path)")
    port: int = Field(5000, **_PORT)
    agent_container_name: str = Field("nullops-agent", max_length=128,
                                      description="The agent container's name on the host")
    agent_data_dir: str = Field("/var/lib/nullops-agent", max_length=255,
                                description="The host directory mounted as the agent's /data")
    agent_bind_address: str | None = Field(
        None, max_length=64, description="The host address the agent's port is published on; "
        "default: host when it is an IP address, else 0.0.0.0")


class NodeUpdate(Request):
    """Only what is given changes; an override set to null goes back to the reported figure."""

    host: str | None = Field(None, min_length=1, max_length=HOST_MAX)
    port: int | None = Field(None, **_PORT)
    cpus_override: float | None = Field(None, **_CPUS_OVERRIDE)
    memory_mb_override: int | None = Field(None, **_MEMORY_OVERRIDE)
    cpu_overcommit: float | None = Field(None, **_NODE_CPU_OVERCOMMIT)
    memory_reserve_mb: int | None = Field(None, **_MEMORY_RESERVE)

    @field_validator("host", "port", "memory_reserve_mb")
    @classmethod
    def not_null(cls, value):
        # Runs only for fields the caller sent: null is refused, leaving the field out keeps it.
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value


class ThumbprintApproval(Request):
    thumbprint: str = Field(
        min_length=64, max_length=95,
        description="The SHA-256 thumbprint from the agent's log line `certificate thumbprint sha256: …`",
    )


class NodeDeleteQuery(Query):
    force: bool = Field(False, description="Also when deployments are left on it (its host is gone "
                        "for good): they are recorded as deleted without a check")


class NodeCapacity(BaseModel):
    cpus: float | None = Field(description="What admission uses: the override, else the report")
    memory_mb: int | None
    reported_cpus: float | None
    reported_memory_mb: int | None
    cpus_override: float | None
    memory_mb_override: int | None
    cpu_overcommit: float | None = Field(description="The node's own ratio; null: the environment's")
    memory_reserve_mb: int = Field(description="Memory (MB) no deployment gets")


class NodeOut(Response):
    """A node as anyone who may view its environment sees it. host, port, thumbprint and
    pending_thumbprint are connection details: only callers who may manage the node get them."""

    id: int
    environment_id: int
    name: str
    host: str | None = Field(None, description="Managers only")
    port: int | None = Field(None, description="Managers only")
    enabled: bool
    status: Literal[NODE_STATUSES]
    status_reason: str
    status_changed_at: datetime
    last_seen_at: datetime | None
    thumbprint: str | None = Field(None, description="Managers only: the pinned certificate")
    pending_thumbprint: str | None = Field(
        None, description="Managers only: a changed certificate waiting for an admin's approval")
    agent_version: str | None
    agent_container_name: str | None = Field(None, description="Managers only")
    agent_data_dir: str | None = Field(None, description="Managers only")
    agent_bind_address: str | None = Field(None, description="Managers only")
    capacity: NodeCapacity
    resources: dict | None = Field(description="The agent's latest live figures, or null")
    resources_at: datetime | None


class AllocatedCpus(BaseModel):
    capacity: float | None = Field(description="The node's CPUs (override, else report)")
    overcommit: float = Field(description="The ratio in force: the node's, else the environment's")
    allocatable: float | None = Field(description="capacity x overcommit")
    allocated: float = Field(description="The CPU limits of its live deployments, summed")


class AllocatedMemory(BaseModel):
    capacity: int | None = Field(description="The node's memory in MB (override, else report)")
    reserve: int = Field(description="Kept for the host; no deployment gets it")
    allocatable: int | None = Field(description="capacity - reserve")
    allocated: int = Field(description="The memory limits of its live deployments, summed")


class RealUse(BaseModel):
    cpu_percent_1m: float | None = Field(description="CPU busy over the last minute; null when stale")
    memory_available_mb: int | None = Field(description="Available memory over the last minute")
    saturated: bool = Field(description="Busy enough that it takes no new deployment now")
    at: datetime | None


class Reservation(BaseModel):
    id: int
    name: str
    status: str
    cpus: float
    memory_mb: int


class OtherReservations(BaseModel):
    count: int
    cpus: float
    memory_mb: int


class NodeAllocation(Response):
    """Allocated against allocatable on one node, its real use, and what each live deployment
    reserves (those the caller may not see are summed under `others`)."""

    cpus: AllocatedCpus
    memory_mb: AllocatedMemory
    real: RealUse
    deployments: list[Reservation]
    others: OtherReservations


NODE_MANAGER_FIELDS = frozenset({"host", "port", "thumbprint", "pending_thumbprint", "agent_container_name",
                                 "agent_data_dir", "agent_bind_address"})


class NodeWithToken(NodeOut):
    token: str = Field(description="The node token. Shown only in this response; it is never stored.")
    command: str = Field(description="The commands that start the agent: the first stores the token "
                         "(pasted at its prompt) in an env file, the second is the docker run command")
    message: str


# Registries
_REGISTRY_NAME = {"pattern": REGISTRY_NAME_PATTERN, "min_length": 1, "max_length": 64}
_REGISTRY_URL = {"min_length": 1, "max_length": 255,
                 # Documented only: the service checks it with its own message (shared with the UI).
                 "json_schema_extra": {"pattern": "^https?://[^/?#]+/?$"},
                 "description": "Base URL of a Registry HTTP API v2, e.g. https://registry.example.com "
                                "or http://127.0.0.1:5000 (no path: /v2 is added)"}
_REGISTRY_USERNAME = {"min_length": 1, "max_length": 255, "description": "Write-only"}
_REGISTRY_PASSWORD = {"min_length": 1, "max_length": 4096,
                      "description": "Write-only: stored encrypted, never returned"}


class RegistryCreate(Request):
    name: str = Field(**_REGISTRY_NAME)
    url: str = Field(**_REGISTRY_URL)
    username: str | None = Field(None, **_REGISTRY_USERNAME)
    password: str | None = Field(None, **_REGISTRY_PASSWORD)


class RegistryUpdate(Request):
    """Only what is given changes. username null removes the credentials (anonymous access);
    a password alone replaces the password and keeps the username."""

    name: str | None = Field(None, **_REGISTRY_NAME)
    url: str | None = Field(None, **_REGISTRY_URL)
    username: str | None = Field(None, **_REGISTRY_USERNAME)
    password: str | None = Field(None, **_REGISTRY_PASSWORD)

    @field_validator("name", "url")
    @classmethod
    def not_null(cls, value):
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value


class RegistryOut(Response):
    """A registry. Credentials are write-only: only has_credentials tells they are set.
    url and has_credentials are for admins; other users get id, name and is_default."""

    id: int
    name: str
    is_default: bool
    url: str | None = Field(None, description="Admins only")
    has_credentials: bool | None = Field(None, description="Admins only")
    created_at: datetime | None = Field(None, description="Admins only")


REGISTRY_ADMIN_FIELDS = frozenset({"url", "has_credentials", "created_at"})


class TagQuery(Query):
    repository: str = Field(min_length=1, max_length=255,
                            description="e.g. nginx (Docker Hub's library/nginx) or team/app")
    pattern: str | None = Field(None, max_length=128,
                                description="A glob over tags: features-*, v*, 1.2.* (tags contain no '/')")


class TagList(BaseModel):
    registry: str
    repository: str
    pattern: str | None
    tags: list[str] = Field(description="Version-looking tags newest first, then the others in natural order")


# Audit
class AuditQuery(Pagination):
    actor: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=64)
    target_type: str | None = Field(None, max_length=32)
    target_id: Id | None = None
    since: datetime | None = None
    until: datetime | None = None


class AuditOut(Response):
    id: int
    at: datetime
    actor_id: int | None
    actor_username: str
    action: str
    target_type: str
    target_id: int | None
    target_name: str
    address: str
    details: dict


# --- provisioning over SSH (issue 16) -----------------------------------------------------------
class SshAccess(Request):
    host: str = Field(min_length=1, max_length=HOST_MAX, description="Where the controller reaches sshd")
    port: int = Field(22, **_PORT)
    user: str = Field(min_length=1, max_length=64)
    private_key: str | None = Field(None, max_length=16384, description="Stored encrypted; never returned")
    password: str | None = Field(None, max_length=16384, description="Stored encrypted; never returned")
    become: bool = Field(True, description="Use sudo on the host")


class NodeProvision(NodeCreate):
    ssh: SshAccess


class ProvisioningRunOut(Response):
    id: int
    node_id: int | None
    node_name: str
    playbook: str
    agent_version: str | None
    status: Literal["pending", "running", "successful", "failed", "canceled", "timeout"]
    failed_task: str | None = Field(description="The task that failed, as Ansible names it")
    message: str = Field(description="Ansible's own message of the failure (secrets redacted)")
    rc: int | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class NodeProvisioned(NodeOut):
    run: ProvisioningRunOut


class ProvisioningEventOut(Response):
    counter: int
    event: str
    task: str | None
    host: str | None
    stdout: str
    data: dict | None
    created_at: datetime


class ProvisioningRunEvents(Response):
    run: ProvisioningRunOut
    events: list[ProvisioningEventOut]


class ProvisioningEventsQuery(Query):
    after: int = Field(0, ge=0, le=ID_MAX, description="Only events with a greater counter (follow a run)")


class UpgradeAgentsOut(Response):
    runs: list[ProvisioningRunOut]
    skipped: list[dict]
