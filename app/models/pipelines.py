"""Pipeline versions: immutable. Saving a project's pipeline creates version N+1.

`definition` is what the admin wrote (nodes and edges, app/services/pipelines.py documents
it); `resolved` is the same graph with every service and plugin copied in as it was at save
time (image, registry, plugin tag pinned), so a later catalog change never reaches a
deployment made from this version.
"""
from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import NEVER_REUSED_IDS, UTCDateTime, utcnow


class PipelineVersion(db.Model):
    __tablename__ = "pipeline_versions"
    # Ids are never given twice: processes cache what a version exposes by id (app/services/specs.py).
    __table_args__ = (UniqueConstraint("project_id", "number", name="uq_pipeline_versions_number"),
                      NEVER_REUSED_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column()
    comment: Mapped[str] = mapped_column(String(500), default="")
    definition = mapped_column(JSON, nullable=False)
    resolved = mapped_column(JSON, nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    project = relationship("Project")
    created_by = relationship("User")
