"""Projects and environments, as far as grants and secrets need them (the catalog issue
fills them in)."""
from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class Project(db.Model):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    grants = relationship("Grant", back_populates="project", passive_deletes=True)
    secrets = relationship(
        "ProjectSecret", back_populates="project", cascade="all, delete-orphan",
        order_by="ProjectSecret.name",
    )


DEFAULT_CLEANUP_MINUTES = 7 * 24 * 60


class Environment(db.Model):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    # Ingress host names are <service>.<deployment>.<environment>.<base_domain>.
    base_domain: Mapped[str] = mapped_column(String(200), default="localhost")
    # Inactivity after which deployments are deleted (projects may override it).
    cleanup_minutes: Mapped[int] = mapped_column(default=DEFAULT_CLEANUP_MINUTES)
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
