"""The tables of the SQL store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

    records  (kind, name) PK · parent · data (canonical JSON text) · revision · created_revision · deleted
             index (kind, parent, name) for listing children
    changes  (revision, kind, name) PK · op ("put" | "delete") · the record as written (NULL for delete)
    meta     key PK · value — "head" (the store revision) and "audit_seq" (last audit seq); every commit
             updates the "head" row first, which serialises writers
    audit    seq PK · revision · time · entry (canonical JSON text) · prev_hash · hash
    access   (minute, principal, permission, resource, granted) PK · hits — the access record: authorization
             checks aggregated per UTC minute (minute = minutes since the Unix epoch), see store/access_log.py

Names and kinds use the "C" collation on PostgreSQL so that ordering (and therefore paging) is by code
point on both backends, like SQLite's BINARY collation. The migrations in ``migrations/versions`` create
exactly these tables; change both together (with a new migration).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

__all__ = ["AUDIT_SEQ", "HEAD", "access", "audit", "changes", "meta", "metadata", "records"]

HEAD = "head"
AUDIT_SEQ = "audit_seq"


def key_type() -> TypeEngine[str]:
    """TEXT ordered by code point on every backend (PostgreSQL: COLLATE "C")."""
    return Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


metadata = MetaData()

records = Table(
    "records",
    metadata,
    Column("kind", key_type(), nullable=False),
    Column("name", key_type(), nullable=False),
    Column("parent", key_type(), nullable=True),
    Column("data", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("created_revision", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    PrimaryKeyConstraint("kind", "name", name="pk_records"),
    Index("ix_records_parent", "kind", "parent", "name"),
)

changes = Table(
    "changes",
    metadata,
    Column("revision", BigInteger, nullable=False),
    Column("kind", key_type(), nullable=False),
    Column("name", key_type(), nullable=False),
    Column("op", String(8), nullable=False),
    Column("data", Text, nullable=True),
    Column("parent", key_type(), nullable=True),
    Column("deleted", Boolean, nullable=True),
    Column("created_revision", BigInteger, nullable=True),
    PrimaryKeyConstraint("revision", "kind", "name", name="pk_changes"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=True),
    Column("time", Text, nullable=False),
    Column("entry", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

access = Table(
    "access",
    metadata,
    Column("minute", BigInteger, nullable=False),
    Column("principal", key_type(), nullable=False),
    Column("permission", key_type(), nullable=False),
    Column("resource", key_type(), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("hits", BigInteger, nullable=False),
    PrimaryKeyConstraint("minute", "principal", "permission", "resource", "granted", name="pk_access"),
)
