"""Repository definitions made through the admin API, and the generation every worker polls.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database from before Alembic got every declared table from its hand-made step 1
    # (migrations.py) before being stamped at 0001: these may exist already.
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "repository_definitions" in present:
        return
    op.create_table(
        "repository_definitions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "repository_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("repository_generation")
    op.drop_table("repository_definitions")
