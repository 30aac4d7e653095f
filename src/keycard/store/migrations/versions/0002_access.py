"""The access record: who used which permission on which resource, aggregated per minute.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _key() -> sa.types.TypeEngine[str]:
    """TEXT ordered by code point on every backend (PostgreSQL: COLLATE "C")."""
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "access",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("principal", _key(), nullable=False),
        sa.Column("permission", _key(), nullable=False),
        sa.Column("resource", _key(), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "principal", "permission", "resource", "granted", name="pk_access"),
    )


def downgrade() -> None:
    op.drop_table("access")
