"""Where the active controller is: written by it when it becomes the active one."""
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class ControllerEndpoint(db.Model):
    """The active controller's internal endpoint (app/controller/internal.py): its address and
    its certificate's thumbprint. Web processes read it for every live-data connection, so they
    follow a failover to the standby, and pin the certificate: the database both sides already
    trust is the only anchor, as the node thumbprints are. One row: there is one active
    controller."""

    __tablename__ = "controller_endpoint"

    id: Mapped[int] = mapped_column(primary_key=True)  # always ACTIVE
    address: Mapped[str] = mapped_column(String(255))
    thumbprint: Mapped[str] = mapped_column(String(64))
    since = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    ACTIVE = 1
