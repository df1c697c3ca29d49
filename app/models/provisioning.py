"""Ansible runs the controller makes on a node's host (issue 16): how to reach the host over
SSH, the runs, and every event of a run."""
from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import NEVER_REUSED_IDS, UTCDateTime, utcnow

# A run that has not ended; app/states.py RUN_TRANSITIONS has them all.
ACTIVE_RUN_STATUSES = ("pending", "running")
_ACTIVE = "status IN ('pending', 'running')"


class NodeSshAccess(db.Model):
    """How the controller reaches a node's host over SSH. The private key or password is stored
    encrypted (app/crypto.py) and decrypted only into a run's private directory."""

    __tablename__ = "node_ssh_access"
    __encrypted__ = {"private_key_ciphertext": "node_ssh.private_key",
                     "password_ciphertext": "node_ssh.password"}

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=22)
    user: Mapped[str] = mapped_column(String(64))
    become: Mapped[bool] = mapped_column(Boolean, default=True)
    private_key_ciphertext: Mapped[str | None] = mapped_column(Text)
    password_ciphertext: Mapped[str | None] = mapped_column(Text)
    # The host's SSH keys as first seen (known_hosts lines): trusted on first use, like the
    # agent's certificate thumbprint, then required.
    known_hosts: Mapped[str | None] = mapped_column(Text)


class ProvisioningRun(db.Model):
    """One playbook run on one node. One active run per node at a time (a partial unique index,
    so two controllers or two clicks cannot both start one)."""

    __tablename__ = "provisioning_runs"
    __encrypted__ = {"secrets_ciphertext": "provisioning_run.secrets"}
    __table_args__ = (
        Index("uq_provisioning_runs_active_node", "node_id", unique=True,
              sqlite_where=text(_ACTIVE), postgresql_where=text(_ACTIVE)),
        NEVER_REUSED_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Kept after the node is gone (a decommission ends by deleting it): the history stays.
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    node_name: Mapped[str] = mapped_column(String(63))
    playbook: Mapped[str] = mapped_column(String(64))
    # What the run brings the agent to (upgrade_agents, onboard_node).
    agent_version: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    failed_task: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text, default="")
    rc: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Extra variables that are secret (the node token of an onboarding), encrypted, for the
    # controller to hand to the run; cleared when the run ends.
    secrets_ciphertext: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    started_at = mapped_column(UTCDateTime(), nullable=True)
    finished_at = mapped_column(UTCDateTime(), nullable=True)

    node = relationship("Node")
    events = relationship("ProvisioningEvent", back_populates="run", cascade="all, delete-orphan",
                          passive_deletes=True, order_by="ProvisioningEvent.counter")


class ProvisioningEvent(db.Model):
    """One Ansible event of a run, secrets redacted, numbered by an increasing counter (the
    order Ansible emitted them in); a final 'run_end' event marks the end."""

    __tablename__ = "provisioning_events"
    __table_args__ = (UniqueConstraint("run_id", "counter", name="uq_provisioning_events_run_counter"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("provisioning_runs.id", ondelete="CASCADE"))
    counter: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    task: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    stdout: Mapped[str] = mapped_column(Text, default="")
    data = mapped_column(JSON, nullable=True)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    run = relationship("ProvisioningRun", back_populates="events")
