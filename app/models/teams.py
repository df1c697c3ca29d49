import enum

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class AccessLevel(enum.StrEnum):
    READ_ONLY = "read_only"
    FULL = "full"


class Team(db.Model):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    members = relationship("TeamMember", back_populates="team", cascade="all, delete-orphan")
    grants = relationship("Grant", back_populates="team", cascade="all, delete-orphan")


class TeamMember(db.Model):
    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    team = relationship("Team", back_populates="members")
    user = relationship("User", back_populates="memberships")


class Grant(db.Model):
    """A team's access level on exactly one project or one environment."""

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint(
            "(project_id IS NULL) <> (environment_id IS NULL)", name="one_target"
        ),
        CheckConstraint("level IN ('read_only', 'full')", name="level"),
        UniqueConstraint("team_id", "project_id", name="uq_grants_team_project"),
        UniqueConstraint("team_id", "environment_id", name="uq_grants_team_environment"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    environment_id: Mapped[int | None] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), index=True
    )
    level: Mapped[str] = mapped_column(String(16))
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    team = relationship("Team", back_populates="grants")
    project = relationship("Project", back_populates="grants")
    environment = relationship("Environment", back_populates="grants")

    @property
    def target(self):
        return self.project if self.project_id is not None else self.environment
