"""Upload sessions any node continues: the bytes stored so far, the blob backend's multipart
state, and the lease of the request writing the session (ADR 20).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database made before Alembic got today's tables from its first hand-made step.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("uploads")}
    wanted: list[sa.Column[object]] = [
        sa.Column("size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("lease", sa.Float(), nullable=True),
    ]
    missing = [c for c in wanted if c.name not in have]
    if missing:
        with op.batch_alter_table("uploads") as batch:
            for column in missing:
                batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        for name in ("lease", "holder", "state", "size"):
            batch.drop_column(name)
