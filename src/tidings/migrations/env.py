"""Alembic environment: tidings runs migrations itself at start, on the connection it hands in."""

from alembic import context

from tidings.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("tidings migrations run through tidings.db.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
