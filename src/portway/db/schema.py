"""Tables of the metadata store. One MetaData for every table, whatever module declares it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# A 64-bit key that stays SQLite's INTEGER PRIMARY KEY (the rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("created", Float, nullable=False),
)

# A blob link says "this image of this repository holds this blob" (distribution's layer link).
blob_links = Table(
    "blob_links",
    metadata,
    Column("repo_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("size", BigInteger, nullable=False),  # 64-bit: layers over 2 GiB
    Column("created", Float, nullable=False),
)
Index("ix_blob_links_digest", blob_links.c.digest)

manifests = Table(
    "manifests",
    metadata,
    Column("repo_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("digest", String(160), primary_key=True),
    Column("media_type", String(255), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("artifact_type", String(255)),
    Column("subject", String(160)),
    Column("annotations", Text),  # JSON, for referrers
    Column("created", Float, nullable=False),
)
Index("ix_manifests_subject", manifests.c.repo_id, manifests.c.image, manifests.c.subject)

# What a manifest references (config, layers, index children): for garbage collection.
manifest_refs = Table(
    "manifest_refs",
    metadata,
    Column("repo_id", Integer, primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("manifest", String(160), primary_key=True),
    Column("ref", String(160), primary_key=True),
    Column("is_manifest", Integer, nullable=False),
)
Index("ix_manifest_refs_ref", manifest_refs.c.repo_id, manifest_refs.c.image, manifest_refs.c.ref)

tags = Table(
    "tags",
    metadata,
    Column("repo_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("digest", String(160), nullable=False),
    Column("updated", Float, nullable=False),
)
Index("ix_tags_digest", tags.c.repo_id, tags.c.image, tags.c.digest)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id"), nullable=False),
    Column("image", String(255), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    # A session any node continues (revision 0002): bytes stored so far, the backend's
    # multipart state as JSON (parts store only), and the lease of the request writing it.
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("state", Text, nullable=True),
    Column("holder", String(64), nullable=True),
    Column("lease", Float, nullable=True),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied", Float, nullable=False),
)
