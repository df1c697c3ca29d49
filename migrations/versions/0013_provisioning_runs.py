"""node_ssh_access, provisioning_runs, provisioning_events: Ansible runs on a node's host from
the control plane (issue 16)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 14:10:00
"""
from alembic import op
import sqlalchemy as sa



revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

ACTIVE = "status IN ('pending', 'running')"


def upgrade():
    op.create_table(
        'node_ssh_access',
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('port', sa.Integer(), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('become', sa.Boolean(), nullable=False),
        sa.Column('private_key_ciphertext', sa.Text(), nullable=True),
        sa.Column('password_ciphertext', sa.Text(), nullable=True),
        sa.Column('known_hosts', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_node_ssh_access_node_id_nodes'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('node_id', name=op.f('pk_node_ssh_access')),
    )
    op.create_table(
        'provisioning_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=True),
        sa.Column('node_name', sa.String(length=63), nullable=False),
        sa.Column('playbook', sa.String(length=64), nullable=False),
        sa.Column('agent_version', sa.String(length=32), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('failed_task', sa.String(length=255), nullable=True),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('rc', sa.Integer(), nullable=True),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('secrets_ciphertext', sa.Text(), nullable=True),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['created_by_id'], ['users.id'],
                                name=op.f('fk_provisioning_runs_created_by_id_users'), ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_provisioning_runs_node_id_nodes'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_provisioning_runs')),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f('ix_provisioning_runs_node_id'), 'provisioning_runs', ['node_id'], unique=False)
    op.create_index(op.f('ix_provisioning_runs_status'), 'provisioning_runs', ['status'], unique=False)
    op.create_index('uq_provisioning_runs_active_node', 'provisioning_runs', ['node_id'], unique=True,
                    sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE))
    op.create_table(
        'provisioning_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('counter', sa.Integer(), nullable=False),
        sa.Column('event', sa.String(length=64), nullable=False),
        sa.Column('task', sa.String(length=255), nullable=True),
        sa.Column('host', sa.String(length=255), nullable=True),
        sa.Column('stdout', sa.Text(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['provisioning_runs.id'],
                                name=op.f('fk_provisioning_events_run_id_provisioning_runs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_provisioning_events')),
        sa.UniqueConstraint('run_id', 'counter', name='uq_provisioning_events_run_counter'),
    )


def downgrade():
    op.drop_table('provisioning_events')
    op.drop_index('uq_provisioning_runs_active_node', table_name='provisioning_runs')
    op.drop_index(op.f('ix_provisioning_runs_status'), table_name='provisioning_runs')
    op.drop_index(op.f('ix_provisioning_runs_node_id'), table_name='provisioning_runs')
    op.drop_table('provisioning_runs')
    op.drop_table('node_ssh_access')
