"""ids never reused on SQLite: deployments, nodes, node commands and pipeline versions are
AUTOINCREMENT, and count on from the highest id the database still mentions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:00:00

SQLite only; PostgreSQL's sequences never give an id twice, so there this does nothing. Without
AUTOINCREMENT SQLite gives the next row the highest id plus one, a deleted row's too: a
deployment's id is its agent label (dep-<id>), so a new deployment took a deleted one's
leftovers for its own. SQLite declares AUTOINCREMENT only when a table is created: each table is
rebuilt (env.py keeps foreign keys off meanwhile, so the rows referring to it stay), then its
counter is set to the highest id it had or that another table still names, such as the audit
log's entries about deleted deployments and nodes.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# {table: queries of ids it gave that other tables may still name after its row is gone}
IDS_NAMED_ELSEWHERE = {
    "deployments": (
        "SELECT max(target_id) FROM audit_entries WHERE target_type = 'deployment'",
        "SELECT max(deployment_id) FROM deployment_events",
        "SELECT max(cloned_from_id) FROM deployments",
    ),
    "nodes": (
        "SELECT max(target_id) FROM audit_entries WHERE target_type = 'node'",
        "SELECT max(node_id) FROM deployments",
        "SELECT max(node_id) FROM node_commands",
    ),
    "node_commands": (),
    "pipeline_versions": (
        "SELECT max(pipeline_version_id) FROM deployments",
    ),
}


def _on_sqlite():
    return op.get_bind().dialect.name == "sqlite"


def upgrade():
    if not _on_sqlite():
        return
    bind = op.get_bind()
    for table, elsewhere in IDS_NAMED_ELSEWHERE.items():
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass
        highest = max((bind.execute(sa.text(query)).scalar() or 0)
                      for query in (f"SELECT max(id) FROM {table}", *elsewhere))
        # The copy left the counter at the highest id copied (or no counter at all); AUTOINCREMENT
        # gives the larger of it and the highest id present, plus one.
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :table"), {"table": table})
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:table, :seq)"),
                     {"table": table, "seq": highest})


def downgrade():
    if not _on_sqlite():
        return
    for table in reversed(list(IDS_NAMED_ELSEWHERE)):
        # Rebuilt from what SQLAlchemy reflects, which does not include AUTOINCREMENT; dropping
        # the old table drops its counter.
        with op.batch_alter_table(table, recreate="always"):
            pass
