"""expiring API tokens, worker tokens of external processes, result retention

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import tidings.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expires_at", tidings.models.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("result_deleted_at", tidings.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_unique_constraint("uq_processes_worker_token_hash", ["worker_token_hash"])


def downgrade() -> None:
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.drop_constraint("uq_processes_worker_token_hash", type_="unique")
        batch_op.drop_column("result_deleted_at")
        batch_op.drop_column("worker_token_hash")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
