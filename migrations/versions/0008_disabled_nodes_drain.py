"""disabled nodes drain: one that still holds deployments keeps its link

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 00:40:00

Data only. Before this version disabling a node dropped its link at once, so the deployments
left on a disabled node were unreachable and their deletes never finished. Such a node goes to
offline here; the controller dials it again and it drains (app/services/nodes.py).
"""
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

DRAINING = ("disabled by an admin: no new deployments; the controller stays linked until the last "
            "one here is deleted, so they keep running and can be deleted")
HOLDS_DEPLOYMENTS = ("EXISTS (SELECT 1 FROM deployments "
                     "WHERE deployments.node_id = nodes.id AND deployments.deleted_at IS NULL)")


def _update(sql, **values):
    # Naive UTC, as app.models.types.UTCDateTime stores it.
    statement = sa.text(sql).bindparams(sa.bindparam("now", type_=sa.DateTime()))
    op.get_bind().execute(statement, {"now": datetime.now(UTC).replace(tzinfo=None), **values})


def upgrade():
    _update("UPDATE nodes SET status = 'offline', status_reason = :reason, status_changed_at = :now "
            f"WHERE status = 'disabled' AND enabled = :disabled AND {HOLDS_DEPLOYMENTS}",
            reason=DRAINING, disabled=False)


def downgrade():
    # The old rule: a disabled node has no link, whatever it holds.
    _update("UPDATE nodes SET status = 'disabled', status_reason = 'disabled by an admin', "
            "status_changed_at = :now WHERE enabled = :disabled "
            "AND status IN ('pending', 'online', 'offline', 'incompatible', 'untrusted')",
            disabled=False)
