from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

ROLE_ADMIN = "admin"
ROLE_USER = "user"
ROLES = (ROLE_ADMIN, ROLE_USER)
# A person logs in with a password; a service account (a CI pipeline) never logs in and uses
# only the API tokens an admin issues for it (issue 17 item 3).
KIND_PERSON = "person"
KIND_SERVICE = "service"
KINDS = (KIND_PERSON, KIND_SERVICE)
# What an API token may do, narrowest first (app/access.py enforces them): read-only answers
# GET only, deploy adds the deployment lifecycle, admin is everything the account may do.
SCOPE_READ_ONLY = "read-only"
SCOPE_DEPLOY = "deploy"
SCOPE_ADMIN = "admin"
SCOPES = (SCOPE_READ_ONLY, SCOPE_DEPLOY, SCOPE_ADMIN)


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(120), default="")
    role: Mapped[str] = mapped_column(String(16), default=ROLE_USER)
    kind: Mapped[str] = mapped_column(String(16), default=KIND_PERSON, server_default=KIND_PERSON)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    # Changes on password change or deactivation, so every open session ends at once.
    session_nonce: Mapped[str] = mapped_column(String(32))
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    last_login_at = mapped_column(UTCDateTime(), nullable=True)

    tokens = relationship("ApiToken", back_populates="user", cascade="all, delete-orphan")
    memberships = relationship("TeamMember", back_populates="user", cascade="all, delete-orphan")

    @property
    def is_service_account(self):
        return self.kind == KIND_SERVICE

    @property
    def is_admin(self):
        return self.role == ROLE_ADMIN

    # Flask-Login protocol
    @property
    def is_authenticated(self):
        return True

    @property
    def is_anonymous(self):
        return False

    def get_id(self):
        return f"{self.id}:{self.session_nonce}"


class ApiToken(db.Model):
    """A personal API token. Only a SHA-256 of the secret is stored: the token is random,
    so a slow hash adds nothing, and lookups stay one indexed query."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    expires_at = mapped_column(UTCDateTime(), nullable=True)
    # Tokens made before scopes existed did everything their account could: they stay so.
    scope: Mapped[str] = mapped_column(String(16), default=SCOPE_ADMIN, server_default=SCOPE_ADMIN)
    last_used_at = mapped_column(UTCDateTime(), nullable=True)
    revoked_at = mapped_column(UTCDateTime(), nullable=True)

    user = relationship("User", back_populates="tokens")


class LoginFailure(db.Model):
    """One failed login, kept for the throttle window and then pruned."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_at", "username", "at"),
        Index("ix_login_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
