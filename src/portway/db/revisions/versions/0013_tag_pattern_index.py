"""PostgreSQL: ix_tags_name (repo_id, name, image) rebuilt with `text_pattern_ops` on the name,
so that a tag pattern's literal start bounds a range of it whatever the database's collation.

A btree in the default collation orders names by the locale's rules (en_US puts `pr-9` and
`pr9` side by side), so PostgreSQL can use it for `LIKE 'pr-9%'` only under the C collation;
the pattern operator class orders by bytes, and `name ~>=~ 'pr-9' AND name ~<~ 'pr-:'` is a
range of it (docs/adr/0030). No query sorts or seeks names in the default collation through
this index (those go through the primary key, per image), so it replaces the plain one rather
than sitting beside it. SQLite: nothing to do, its index already orders by bytes (0010).

A plain CREATE INDEX inside the migration's transaction (CONCURRENTLY cannot run in one),
under another name first: while it is built tag writes wait and reads go on (a SHARE lock);
only the drop of the old index and the rename, just before the commit, hold the table.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ["repo_id", "name", "image"]


def _definition() -> str | None:
    found = op.get_bind().scalar(
        sa.text(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'tags' AND indexname = 'ix_tags_name'"
        )
    )
    return None if found is None else str(found)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    found = _definition()
    if found is not None and "text_pattern_ops" in found:
        return  # made by the hand-made step 1 from today's declaration
    op.create_index(
        "ix_tags_name_new", "tags", _COLUMNS, postgresql_ops={"name": "text_pattern_ops"}
    )
    if found is not None:
        op.drop_index("ix_tags_name", table_name="tags")
    op.execute("ALTER INDEX ix_tags_name_new RENAME TO ix_tags_name")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_tags_name", table_name="tags")
    op.create_index("ix_tags_name", "tags", _COLUMNS)
