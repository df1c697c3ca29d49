"""node_agent_settings: how a node's agent runs on its host (container name, data directory, the
address its port is bound to), the parameters of the node page's command and of the
nullops_agent role (issue 16)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 13:30:00

Existing nodes get what the fixed command used: nullops-agent, /var/lib/nullops-agent, 0.0.0.0.
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'node_agent_settings',
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('container_name', sa.String(length=128), nullable=False),
        sa.Column('data_dir', sa.String(length=255), nullable=False),
        sa.Column('bind_address', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_node_agent_settings_node_id_nodes'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('node_id', name=op.f('pk_node_agent_settings')),
    )
    op.execute("INSERT INTO node_agent_settings (node_id, container_name, data_dir, bind_address) "
               "SELECT id, 'nullops-agent', '/var/lib/nullops-agent', '0.0.0.0' FROM nodes")


def downgrade():
    op.drop_table('node_agent_settings')
