"""Nodes (Docker hosts with an agent) and the commands the web tier leaves for the controller."""
from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text, UniqueConstraint, func, text
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from app.extensions import db
from app.models.types import NEVER_REUSED_IDS, UTCDateTime, utcnow

MIB = 1024 * 1024
# Memory of a node that no deployment gets: the OS, Docker, the agent (about 850 MB in use on a
# whole test host with its PostgreSQL; dockerd and the agent well under 200 MB).
DEFAULT_MEMORY_RESERVE_MB = 512


class Node(db.Model):
    __tablename__ = "nodes"
    # Ids are never given twice: the controller keys links, resources frames and commands by them,
    # and the audit log names nodes by them.
    __table_args__ = (UniqueConstraint("environment_id", "name", name="uq_nodes_environment_name"),
                      NEVER_REUSED_IDS)
    # The agent token never is stored: only the verifier derived from it (agent.protocol), and
    # that encrypted under the master key, so a database dump alone cannot command an agent.
    __encrypted__ = {"verifier_ciphertext": "node.verifier"}
    # The database's defaults are read when first used, not RETURNed by every INSERT (see
    # memory_reserve_mb).
    __mapper_args__ = {"eager_defaults": False}

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"),
                                                index=True)
    name: Mapped[str] = mapped_column(String(63))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(default=5000)
    enabled: Mapped[bool] = mapped_column(default=True)
    verifier_ciphertext: Mapped[str | None] = mapped_column(Text)  # None once revoked
    # Pinned at the first good connection; a different one waits in pending_thumbprint.
    thumbprint: Mapped[str | None] = mapped_column(String(64))
    pending_thumbprint: Mapped[str | None] = mapped_column(String(64))
    # app/states.py NODE_TRANSITIONS lists the statuses and how they may change.
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    status_reason: Mapped[str] = mapped_column(String(500), default="")
    status_changed_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    last_seen_at = mapped_column(UTCDateTime(), nullable=True)
    agent_node_id: Mapped[str | None] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(32))

    # Capacity as the agent reports it, and an admin's override (None: use the report).
    reported_cpus: Mapped[float | None] = mapped_column()
    reported_memory_mb: Mapped[int | None] = mapped_column()
    cpus_override: Mapped[float | None] = mapped_column()
    memory_mb_override: Mapped[int | None] = mapped_column()
    # The environment's CPU overcommit ratio unless set here; memory never is overcommitted and
    # the reserve is kept out of what deployments may hold (app/services/admission.py).
    # The database's defaults, and deferred: rows written and read through the models by tests
    # of older revisions (tests/test_migrations.py) leave them out (a server default, NULL too, keeps a
    # column out of an INSERT that does not set it).
    cpu_overcommit: Mapped[float | None] = mapped_column(server_default=text("NULL"), deferred=True)
    memory_reserve_mb: Mapped[int] = mapped_column(server_default=str(DEFAULT_MEMORY_RESERVE_MB),
                                                   deferred=True)
    # Latest live figures from the agent (resources frames), and what they say is actually free
    # (set with them, see reported_free): admission compares against those two numbers in SQL.
    resources = mapped_column(JSON, nullable=True)
    resources_at = mapped_column(UTCDateTime(), nullable=True)
    reported_free_cpus: Mapped[float | None] = mapped_column()
    reported_free_memory_mb: Mapped[int | None] = mapped_column()
    # The host's CPU use in percent over the last minute (the frame's cpu_percent_1m, else its
    # cpu_percent): admission refuses a node only while this says it is saturated.
    reported_cpu_percent: Mapped[float | None] = mapped_column(server_default=text("NULL"), deferred=True)
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    environment = relationship("Environment", back_populates="nodes")
    commands = relationship("NodeCommand", back_populates="node", cascade="all, delete-orphan",
                            passive_deletes=True)
    agent_settings = relationship("NodeAgentSettings", uselist=False, cascade="all, delete-orphan",
                                  passive_deletes=True)
    ssh_access = relationship("NodeSshAccess", uselist=False, cascade="all, delete-orphan",
                              passive_deletes=True)

    # How the agent runs on the host (NodeAgentSettings), with the defaults of the fixed command
    # that came before it for a node without a row.
    @property
    def agent_container_name(self):
        return self.agent_settings.container_name if self.agent_settings else AGENT_DEFAULTS["container_name"]

    @property
    def agent_data_dir(self):
        return self.agent_settings.data_dir if self.agent_settings else AGENT_DEFAULTS["data_dir"]

    @property
    def agent_bind_address(self):
        return self.agent_settings.bind_address if self.agent_settings else AGENT_DEFAULTS["bind_address"]

    @validates("resources")
    def _derive_free(self, _key, figures):
        self.reported_free_cpus, self.reported_free_memory_mb = reported_free(figures)
        self.reported_cpu_percent = sustained_cpu_percent(figures)
        return figures

    # The capacity admission counts with: an admin's override, else the agent's report (in
    # Python and, for admission's query, in SQL).
    @hybrid_property
    def capacity_cpus(self):
        return self.cpus_override if self.cpus_override is not None else self.reported_cpus

    @capacity_cpus.inplace.expression
    @classmethod
    def _capacity_cpus_expression(cls):
        return func.coalesce(cls.cpus_override, cls.reported_cpus)

    @hybrid_property
    def capacity_memory_mb(self):
        return self.memory_mb_override if self.memory_mb_override is not None else self.reported_memory_mb

    @capacity_memory_mb.inplace.expression
    @classmethod
    def _capacity_memory_mb_expression(cls):
        return func.coalesce(cls.memory_mb_override, cls.reported_memory_mb)


# The figures of a resources frame (agent/protocol.py RESOURCES) and the range each stays in on a
# real host. A figure outside it is not used: besides being nonsense, it could not be stored (the
# free memory in MB is a 32-bit column; PostgreSQL's JSON has no Infinity or NaN).
FIGURE_RANGES = {
    "host": {"cpus": (0, 65536), "cpu_percent": (0, 100),
             "memory_total": (0, 2 ** 50), "memory_available": (0, 2 ** 50),   # bytes: 1 PiB
             # Over the last minute (agents from issue 18 on; older ones leave them out).
             "cpu_percent_1m": (0, 100), "memory_available_1m": (0, 2 ** 50)},
    "allocated": {"cpus": (0, 65536), "memory_mb": (0, 2 ** 30)},
}


OPTIONAL_FIGURES = {"cpu_percent_1m", "memory_available_1m"}  # left out when the frame lacks them


def usable_figures(frame):
    """(figures, unusable) of a resources frame: {"host": {...}, "allocated": {...}} holding each
    figure of FIGURE_RANGES, None where the frame lacks it or holds anything but a number in its
    range; and the names ("host.cpus") of the figures it held that were not usable."""
    figures, unusable = {}, []
    for part, ranges in FIGURE_RANGES.items():
        given = frame.get(part) if isinstance(frame, dict) else None
        given = given if isinstance(given, dict) else {}
        figures[part] = {}
        for name, (low, high) in ranges.items():
            value = given.get(name)
            # NaN fails the comparison too; a bool is an int to Python, not a figure.
            usable = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
            if value is not None and not usable:
                unusable.append(f"{part}.{name}")
            if value is None and name in OPTIONAL_FIGURES:
                continue
            figures[part][name] = value if usable else None
    return figures, unusable


def _sustained(host, name):
    """The minute's figure when the agent sends it, else the latest one: a short spike (an image
    pull, one busy test) must not turn deployments away (issue 18 item 2)."""
    minute = host.get(f"{name}_1m")
    return minute if minute is not None else host[name]


def reported_free(figures):
    """(cpus, memory_mb) a resources frame ({"host": {...}, ...}) says are actually free over the
    last minute; either is None when the frame lacks what it takes or holds a figure
    usable_figures() refuses."""
    host = usable_figures(figures)[0]["host"]
    cpus = memory_mb = None
    percent = _sustained(host, "cpu_percent")
    if host["cpus"] is not None and percent is not None:
        cpus = host["cpus"] * (1 - percent / 100)
    available = _sustained(host, "memory_available")
    if available is not None:
        memory_mb = int(available) // MIB
    return cpus, memory_mb


AGENT_DEFAULTS = {"container_name": "nullops-agent", "data_dir": "/var/lib/nullops-agent",
                  "bind_address": "0.0.0.0"}


class NodeAgentSettings(db.Model):
    """How a node's agent runs on its host: the parameters of the command on the node's page and
    of the nullops_agent role (issue 16.4). A table of its own: the node row is what the
    controller reads and writes all the time; these change only when an admin says so."""

    __tablename__ = "node_agent_settings"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    container_name: Mapped[str] = mapped_column(String(128))
    data_dir: Mapped[str] = mapped_column(String(255))
    bind_address: Mapped[str] = mapped_column(String(64))


def sustained_cpu_percent(figures):
    return _sustained(usable_figures(figures)[0]["host"], "cpu_percent")


class NodeCommand(db.Model):
    """Work for the controller about one node (the web tier holds no agent links): rotate the
    token over the live link, drop the link after a revocation, approve a thumbprint."""

    __tablename__ = "node_commands"
    # Ids are never given twice: the controller marks the command it ran done by its id, however
    # long it ran (a prepull may take minutes); another command must not be there by then.
    __table_args__ = (NEVER_REUSED_IDS,)
    __encrypted__ = {"payload_ciphertext": "node_command.payload"}

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload_ciphertext: Mapped[str | None] = mapped_column(Text)  # e.g. the new verifier
    created_at = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    done_at = mapped_column(UTCDateTime(), nullable=True, index=True)
    result: Mapped[str] = mapped_column(String(500), default="")

    node = relationship("Node", back_populates="commands")


class NodeOutbox(db.Model):
    """The node agent's event outbox as the controller knows it: its id (hello) and the highest
    seq of it stored, so that a replay of events stored before their ack got through is skipped
    instead of written twice. Seqs are unique within one outbox only: a new one starts again."""

    __tablename__ = "node_outboxes"

    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    outbox: Mapped[str] = mapped_column(String(64))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
