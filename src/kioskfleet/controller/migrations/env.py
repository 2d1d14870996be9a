"""Alembic environment: runs on the connection the controller hands over."""

from alembic import context
from sqlmodel import SQLModel

from kioskfleet.controller import models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through kioskfleet.controller.db.migrate()")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
