"""Initial schema: records, changes, meta (head, audit_seq), audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _key() -> sa.types.TypeEngine[str]:
    """TEXT ordered by code point on every backend (PostgreSQL: COLLATE "C")."""
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("kind", _key(), nullable=False),
        sa.Column("name", _key(), nullable=False),
        sa.Column("parent", _key(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_revision", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_records"),
    )
    op.create_index("ix_records_parent", "records", ["kind", "parent", "name"])
    op.create_table(
        "changes",
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("kind", _key(), nullable=False),
        sa.Column("name", _key(), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("parent", _key(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=True),
        sa.Column("created_revision", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("revision", "kind", "name", name="pk_changes"),
    )
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("time", sa.Text(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(meta, [{"key": "head", "value": 0}, {"key": "audit_seq", "value": 0}])


def downgrade() -> None:
    for table in ("audit", "meta", "changes", "records"):
        op.drop_table(table)
