"""Alembic environment: runs on the connection the controller hands over."""

from alembic import context
from sqlmodel import SQLModel

from kioskfleet.controller import models

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through kioskfleet.controller.db.migrate()")
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=True,
    **models.comparison_filters(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
