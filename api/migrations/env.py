"""Alembic environment: run only through api.db.migrate, which hands over an open connection."""

from __future__ import annotations

from alembic import context

from api.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
