"""Baseline: the schema the hand-made migration steps 1-3 left (Portway before Alembic).

An SQLite database made by those steps is stamped at this revision without running it (its
tables are this schema: SQLite's INTEGER already holds the 64-bit sizes declared here).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("cleared", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_login_failures_address_at", "login_failures", ["address", "at"], unique=False
    )
    op.create_index("ix_login_failures_at", "login_failures", ["at"], unique=False)
    op.create_index("ix_login_failures_username", "login_failures", ["username"], unique=False)
    op.create_table(
        "manifest_refs",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("manifest", sa.String(length=160), nullable=False),
        sa.Column("ref", sa.String(length=160), nullable=False),
        sa.Column("is_manifest", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("repo_id", "image", "manifest", "ref"),
    )
    op.create_index(
        "ix_manifest_refs_ref", "manifest_refs", ["repo_id", "image", "ref"], unique=False
    )
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "security_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "users",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "blob_links",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
        ),
        sa.PrimaryKeyConstraint("repo_id", "image", "digest"),
    )
    op.create_index("ix_blob_links_digest", "blob_links", ["digest"], unique=False)
    op.create_table(
        "manifests",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("artifact_type", sa.String(length=255), nullable=True),
        sa.Column("subject", sa.String(length=160), nullable=True),
        sa.Column("annotations", sa.Text(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
        ),
        sa.PrimaryKeyConstraint("repo_id", "image", "digest"),
    )
    op.create_index(
        "ix_manifests_subject", "manifests", ["repo_id", "image", "subject"], unique=False
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("repository", sa.String(length=128), nullable=False),
        sa.Column("issued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["username"], ["users.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_refresh_tokens_expires", "refresh_tokens", ["expires"], unique=False)
    op.create_index("ix_refresh_tokens_username", "refresh_tokens", ["username"], unique=False)
    op.create_table(
        "role_admin_privileges",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("privilege", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "privilege"),
    )
    op.create_table(
        "role_includes",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("included", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "included"),
    )
    op.create_table(
        "role_privileges",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("repository", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "repository", "action"),
    )
    op.create_table(
        "tags",
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
        ),
        sa.PrimaryKeyConstraint("repo_id", "image", "name"),
    )
    op.create_index("ix_tags_digest", "tags", ["repo_id", "image", "digest"], unique=False)
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"],
            ["repositories.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "user_roles",
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["role"], ["roles.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["username"], ["users.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("username", "role"),
    )
    # What the hand-made steps recorded, so a release from before Alembic opening this
    # database finds nothing to do.
    version = sa.table("schema_version", sa.column("version"), sa.column("applied"))
    op.bulk_insert(version, [{"version": v, "applied": time.time()} for v in (1, 2, 3)])


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: restore a backup instead")
