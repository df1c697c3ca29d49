"""a deployment keeps the spec it was first sent with, and a key for its outputs; a node, the
last event seq stored from its agent

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:40:00

Rows of existing deployments get NULL: the controller compiles their spec the next time it
sends it and keeps it from then on (docs/upgrade.md).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spec', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('output_key_ciphertext', sa.Text(), nullable=True))
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_outbox', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('last_event_seq', sa.BigInteger(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('last_event_seq')
        batch_op.drop_column('agent_outbox')
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('output_key_ciphertext')
        batch_op.drop_column('spec')
