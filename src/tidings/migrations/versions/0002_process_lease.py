"""process lease: processes.heartbeat_at, and an index on status for the sweep

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import tidings.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("heartbeat_at", tidings.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_processes_status", ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.drop_index("ix_processes_status")
        batch_op.drop_column("heartbeat_at")
