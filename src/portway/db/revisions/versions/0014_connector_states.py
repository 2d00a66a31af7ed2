"""Each node's view of the connectors it serves (listening or failed, and why), so the admin
API can say, on any node, which nodes of a cluster listen on a connector (ADR 0032).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "connector_states",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("listen", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node", "listen"),
    )


def downgrade() -> None:
    op.drop_table("connector_states")
