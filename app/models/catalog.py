"""The catalog admins describe once: projects (limits, secrets), environments, services and
plugins. Pipelines (app/models/pipelines.py) put services and plugins together."""
from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

DEFAULT_PROJECT_CPUS = 1.0
DEFAULT_PROJECT_MEMORY_MB = 1024


class Project(db.Model):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    # Applied to every deployment of the project (each of its containers is held to them) and
    # what admission reserves on a node for each deployment.
    cpus: Mapped[float] = mapped_column(default=DEFAULT_PROJECT_CPUS, server_default="1.0")
    memory_mb: Mapped[int] = mapped_column(default=DEFAULT_PROJECT_MEMORY_MB, server_default="1024")
    # Inactivity before auto-cleanup; None: the environment's default.
    cleanup_minutes: Mapped[int | None] = mapped_column()
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    grants = relationship("Grant", back_populates="project", passive_deletes=True)
    secrets = relationship(
        "ProjectSecret", back_populates="project", cascade="all, delete-orphan",
        order_by="ProjectSecret.name",
    )


DEFAULT_CLEANUP_MINUTES = 7 * 24 * 60
# CPUs are compressible: a node's CPUs times this are what its deployments' limits may add up to
# (docs/deployments.md "Admission" says how it was chosen: an idle demo deployment used 0.03 % of
# a CPU for a limit of 0.5).
DEFAULT_CPU_OVERCOMMIT = 16.0


class Environment(db.Model):
    __tablename__ = "environments"
    # The database's defaults are read when first used, not RETURNed by every INSERT (see
    # cpu_overcommit).
    __mapper_args__ = {"eager_defaults": False}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    # Ingress host names are <service>.<deployment>.<environment>.<base_domain>.
    base_domain: Mapped[str] = mapped_column(String(200), default="localhost")
    # Inactivity after which deployments are deleted (projects may override it).
    cleanup_minutes: Mapped[int] = mapped_column(default=DEFAULT_CLEANUP_MINUTES)
    # Nodes may override it (Node.cpu_overcommit). The database's default, and deferred: rows
    # written and read through the models by tests of older revisions leave it out.
    cpu_overcommit: Mapped[float] = mapped_column(server_default=str(int(DEFAULT_CPU_OVERCOMMIT)),
                                                  deferred=True)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    grants = relationship("Grant", back_populates="environment", passive_deletes=True)
    nodes = relationship("Node", back_populates="environment", cascade="all, delete-orphan",
                         order_by="Node.name")


class ProjectSecret(db.Model):
    """A project secret; the value is only ever stored encrypted (app/crypto.py)."""

    __tablename__ = "project_secrets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_project_secrets_name"),)
    # column -> AEAD context: `nullops keys rotate` finds encrypted columns through this.
    __encrypted__ = {"value_ciphertext": "project_secret.value"}

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    value_ciphertext: Mapped[str] = mapped_column(Text)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)

    project = relationship("Project", back_populates="secrets")


TAG_MODES = ("pinned", "selectable")


class Service(db.Model):
    """A container image and how it runs. Pipelines copy it into each version they save, so a
    later change reaches only new pipeline versions."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id", ondelete="RESTRICT"))
    image: Mapped[str] = mapped_column(String(255))            # repository, e.g. team/shop-web
    tag_mode: Mapped[str] = mapped_column(String(16), default="pinned")
    tag: Mapped[str | None] = mapped_column(String(128))        # the tag when pinned
    tag_pattern: Mapped[str | None] = mapped_column(String(128))  # glob when selectable
    ports = mapped_column(JSON, nullable=False, default=list)     # container ports it listens on
    exposed_ports = mapped_column(JSON, nullable=False, default=list)  # published for the ingress
    env = mapped_column(JSON, nullable=False, default=dict)
    command = mapped_column(JSON, nullable=True)                # list of arguments, or None
    health_check = mapped_column(JSON, nullable=True)           # agent readiness, e.g. {"type": "http", ...}
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)

    registry = relationship("Registry")


DEFAULT_PLUGIN_TIMEOUT_S = 300


class Plugin(db.Model):
    """A pipeline component: an image that reads JSON on stdin and writes JSON on stdout
    (docs/plugins.md). Pipeline versions pin its image and tag when they are saved."""

    __tablename__ = "plugins"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id", ondelete="RESTRICT"))
    image: Mapped[str] = mapped_column(String(255))
    tag: Mapped[str] = mapped_column(String(128))
    params_schema = mapped_column(JSON, nullable=False, default=dict)  # JSON Schema of params
    cpus: Mapped[float] = mapped_column(default=0.5)
    memory_mb: Mapped[int] = mapped_column(default=256)
    timeout_s: Mapped[int] = mapped_column(default=DEFAULT_PLUGIN_TIMEOUT_S)
    network: Mapped[bool] = mapped_column(default=False)  # joins the deployment's network
    # Run again with action "rollback" when the deployment is rolled back or deleted (for what it
    # made outside the deployment's own containers, e.g. a database on a shared server).
    rollback: Mapped[bool] = mapped_column(default=False, server_default="0")
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)

    registry = relationship("Registry")
