"""A stop asked for a running job (`POST /service/rest/v1/tasks/{id}/stop`): when and by whom,
on the run's row, where the node running it looks between units of work.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.add_column(sa.Column("stop_requested", sa.Float(), nullable=True))
        batch.add_column(sa.Column("stopped_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("stopped_by")
        batch.drop_column("stop_requested")
