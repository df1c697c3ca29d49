"""deployment_specs: the spec a deployment was first sent with, and the key of its outputs;
node_outboxes: the last event seq stored from each agent's outbox; deployment events by age
(retention); controller_endpoint: where the active controller's internal endpoint is

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:40:00

Existing deployments have no row: the controller compiles their spec the next time it sends
it and keeps it from then on (docs/upgrade.md).
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'controller_endpoint',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=255), nullable=False),
        sa.Column('thumbprint', sa.String(length=64), nullable=False),
        sa.Column('since', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_controller_endpoint')),
    )
    op.create_index('ix_deployment_events_at', 'deployment_events', ['at'], unique=False)
    op.create_table(
        'deployment_specs',
        sa.Column('deployment_id', sa.Integer(), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('output_key_ciphertext', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'],
                                name=op.f('fk_deployment_specs_deployment_id_deployments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('deployment_id', name=op.f('pk_deployment_specs')),
    )
    op.create_table(
        'node_outboxes',
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('outbox', sa.String(length=64), nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'],
                                name=op.f('fk_node_outboxes_node_id_nodes'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('node_id', name=op.f('pk_node_outboxes')),
    )


def downgrade():
    op.drop_table('controller_endpoint')
    op.drop_table('node_outboxes')
    op.drop_table('deployment_specs')
    op.drop_index('ix_deployment_events_at', table_name='deployment_events')
