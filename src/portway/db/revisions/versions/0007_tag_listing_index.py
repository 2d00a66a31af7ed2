"""The index the admin API's tag listings read: (repo_id, image, updated, name, digest).

An image's newest tag change is one seek, push-time order a range scan, and its whole tag
list index-only (no table row per tag): at 100,000 tags the difference between about a second
and a few tens of milliseconds (docs/benchmarks.md, "Admin API at 100,000 tags").

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database from before Alembic got every declared index from its hand-made step 1.
    present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("tags")}
    if "ix_tags_pushed" not in present:
        op.create_index("ix_tags_pushed", "tags", ["repo_id", "image", "updated", "name", "digest"])


def downgrade() -> None:
    op.drop_index("ix_tags_pushed", table_name="tags")
