"""Storage life cycle: garbage candidates, holds and blob states (ADR 0025).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "gc_candidates",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("repo_id", "image", "digest", "kind"),
    )
    op.create_index("ix_gc_candidates_digest", "gc_candidates", ["digest"], unique=False)
    op.create_index("ix_gc_candidates_since", "gc_candidates", ["since"], unique=False)
    op.create_table(
        "gc_holds",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("repo_id", "image", "digest"),
    )
    op.create_index("ix_gc_holds_digest", "gc_holds", ["digest"], unique=False)
    op.create_table(
        "blob_states",
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("blob_states")
    op.drop_index("ix_gc_holds_digest", table_name="gc_holds")
    op.drop_table("gc_holds")
    op.drop_index("ix_gc_candidates_since", table_name="gc_candidates")
    op.drop_index("ix_gc_candidates_digest", table_name="gc_candidates")
    op.drop_table("gc_candidates")
