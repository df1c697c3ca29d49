"""admission that fits QA use (issue 18 item 2): an environment's CPU overcommit ratio, a node's
override of it and its memory reserve, and the agent's CPU use over the last minute

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:10:00

Existing environments get the shipped ratio and existing nodes the shipped reserve (server
defaults, so the rows are carried over on SQLite's table copy too); no node overrides the ratio.
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('environments') as batch:
        batch.add_column(sa.Column('cpu_overcommit', sa.Float(), server_default='16', nullable=False))
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('cpu_overcommit', sa.Float(), nullable=True))
        batch.add_column(sa.Column('memory_reserve_mb', sa.Integer(), server_default='512', nullable=False))
        batch.add_column(sa.Column('reported_cpu_percent', sa.Float(), nullable=True))


def downgrade():
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('reported_cpu_percent')
        batch.drop_column('memory_reserve_mb')
        batch.drop_column('cpu_overcommit')
    with op.batch_alter_table('environments') as batch:
        batch.drop_column('cpu_overcommit')
