"""The index Nexus's search reads for a tag pattern across a repository's images:
(repo_id, name, image).

A `version=pr-9*` search is a range of this index (tags from `pr-9` up to `pr-:`), sorted by
image and tag afterwards, instead of a walk through every tag of the repository in (image,
tag) order: at 100,000 tags about 100 ms of scan became about 1 ms (docs/benchmarks.md,
"Admin API at 100,000 tags").

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database from before Alembic got every declared index from its hand-made step 1.
    present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("tags")}
    if "ix_tags_name" not in present:
        op.create_index("ix_tags_name", "tags", ["repo_id", "name", "image"])


def downgrade() -> None:
    op.drop_index("ix_tags_name", table_name="tags")
