"""an index on deployments.status_changed_at: the ingress's half-second look for the newest
change and its read of what changed since (issue 19 item 3) each scanned the table

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 17:20:00
"""
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_deployments_status_changed_at', 'deployments', ['status_changed_at'])


def downgrade():
    op.drop_index('ix_deployments_status_changed_at', table_name='deployments')
