"""Alembic environment of the keycard store; run through ``SqlStore.migrate()``, which passes an
open connection (inside its transaction, holding the migration lock) as ``attributes["connection"]``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("keycard migrations run through keycard.store.sql.SqlStore.migrate(), not the alembic CLI.")

context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
