"""When each manifest was last pulled, for cleanup policies and proxy cache expiry (ADR 0025).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_pulls",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("repo_id", "image", "digest"),
    )


def downgrade() -> None:
    op.drop_table("manifest_pulls")
