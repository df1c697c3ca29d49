"""Container registries that images and tags come from. Docker Hub is present by default."""
from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

DOCKER_HUB_NAME = "docker-hub"
DOCKER_HUB_URL = "https://registry-1.docker.io"


class Registry(db.Model):
    """A Registry HTTP API v2 endpoint. The password is only ever stored encrypted and is
    write-only: no response, log line or audit entry carries it (nor the username)."""

    __tablename__ = "registries"
    __encrypted__ = {"password_ciphertext": "registry.password"}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Scheme and host (and port) only, no trailing slash: the API lives under <url>/v2/.
    url: Mapped[str] = mapped_column(String(255))
    username: Mapped[str | None] = mapped_column(String(255))
    password_ciphertext: Mapped[str | None] = mapped_column(Text)
    # Docker Hub: created by migration 0003, cannot be deleted.
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    @property
    def has_credentials(self):
        return self.username is not None and self.password_ciphertext is not None
