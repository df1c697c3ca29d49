"""Deployments and their history. Statuses and transitions: app/states.py."""
from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import NEVER_REUSED_IDS, UTCDateTime, utcnow


class Deployment(db.Model):
    __tablename__ = "deployments"
    __table_args__ = (
        # A name is unique among the environment's live deployments; a deleted one's row stays
        # for the history and its name (and so its URLs) may be used again.
        Index("uq_deployments_live_name", "environment_id", "name", unique=True,
              postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
        # The deployments list: live ones, newest first, a page at a time (benchmarks/api_latency.py:
        # without it every page sorted all visible rows).
        Index("ix_deployments_live_newest", "created_at", "id",
              postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
        # Admission's allocation per node, and the list's count of what a user may see, each read
        # only an index (narrow ones: wider, PostgreSQL's stock costs prefer reading the table).
        Index("ix_deployments_live_placement", "environment_id", "node_id",
              postgresql_include=["cpus", "memory_mb"],
              postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
        Index("ix_deployments_live_visibility", "environment_id", "project_id", "status",
              postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
        # The ingress reads the newest change every half second and the deployments changed since
        # its last look (app/ingress/routes.py): without it both read the whole table.
        Index("ix_deployments_status_changed_at", "status_changed_at"),
        # Deleted is the one status that is not live, and deleted_at says so in the indexes above.
        CheckConstraint("(status = 'deleted') = (deleted_at IS NOT NULL)", name="deleted_at_with_status"),
        # An id is never given twice (SQLite would give a deleted row's to the next one): it is
        # the agent's label on everything the deployment owns (agent_id), and the audit log's.
        NEVER_REUSED_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="RESTRICT"),
                                                index=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    pipeline_version_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id",
                                                                ondelete="RESTRICT"))
    tags = mapped_column(JSON, nullable=False, default=dict)  # {step id: image tag} of every service
    # What admission reserved on the node: the project's limits when it was created.
    cpus: Mapped[float] = mapped_column()
    memory_mb: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    status_message: Mapped[str] = mapped_column(String(1000), default="")
    status_changed_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # The run the agent is doing for it, and the published ports it reported when ready:
    # {step id: {"ports": {"8000": 49153}}} (the ingress routes to them).
    run_id: Mapped[str | None] = mapped_column(String(64))
    published = mapped_column(JSON, nullable=False, default=dict)
    progress = mapped_column(JSON, nullable=False, default=dict)  # {step id: step status}
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    cloned_from_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # Auto-cleanup counts from here (creation, extension, retry).
    last_activity_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    delete_requested_at = mapped_column(UTCDateTime(), nullable=True)
    deleted_at = mapped_column(UTCDateTime(), nullable=True, index=True)
    # Cleanup checks: how many deletes the agent has run for it, and when to try again.
    cleanup_attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at = mapped_column(UTCDateTime(), nullable=True)

    project = relationship("Project")
    environment = relationship("Environment")
    node = relationship("Node")
    pipeline_version = relationship("PipelineVersion")
    created_by = relationship("User")

    @property
    def agent_id(self):
        """The deployment's id on the agent and in container labels: stable and a DNS label
        (names alone are only unique per environment and may be reused after a delete; ids never
        are, see __table_args__)."""
        return f"dep-{self.id}"


class DeploymentEvent(db.Model):
    """One line of a deployment's history: who did what, status changes, step progress."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_at", "at"),)  # retention deletes by age

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"),
                                               index=True)
    at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    kind: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    message: Mapped[str] = mapped_column(String(1000), default="")
    data = mapped_column(JSON, nullable=True)

    actor = relationship("User")


class DeploymentSpec(db.Model):
    """What the agent runs for a deployment (app/services/specs.py), compiled when the controller
    first sends it (after creation or a retry) and sent as it is ever after: a later change to
    the environment, a registry or the ingress settings must not make the agent re-run a ready
    deployment (ARCHITECTURE.md). Beside it the key the agent seals the deployment's step
    outputs with before they touch its disk (they may hold passwords; issue #14.7). A table of
    its own: a spec may be hundreds of KiB, and only what talks to agents reads it."""

    __tablename__ = "deployment_specs"
    __encrypted__ = {"output_key_ciphertext": "deployment.output_key"}

    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"),
                                               primary_key=True)
    spec = mapped_column(JSON, nullable=False)
    output_key_ciphertext = mapped_column(Text, nullable=False)
