"""The blob store `[storage]` names, built for the composition root (portway.compose)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from portway.storage.blobstore import BlobStore
from portway.storage.filesystem import FilesystemBackend

if TYPE_CHECKING:
    from portway.config import Settings
    from portway.db.store import MetadataStore


def open_blobs(settings: Settings, meta: Callable[[], MetadataStore]) -> BlobStore:
    """A folder (type filesystem), or a bucket (type s3) whose upload sessions keep their
    state in the metadata store `meta()` opens (asked for only then: a folder needs no
    database) and whose proxy spool is local temp space."""
    storage, data_dir = settings.storage, settings.server.data_dir
    if storage.type == "filesystem":
        return BlobStore(FilesystemBackend(storage.path or data_dir / "storage"))
    from portway.storage.fsspool import LocalSpool
    from portway.storage.part_uploads import PartUploads
    from portway.storage.s3 import S3Settings
    from portway.storage.s3open import LazyS3Backend

    backend = LazyS3Backend(
        S3Settings(  # credentials: botocore's chain (AWS_ACCESS_KEY_ID, ...)
            bucket=storage.bucket,
            endpoint=storage.endpoint or None,
            region=storage.region,
            public_endpoint=storage.public_endpoint or None,
            prefix=storage.prefix,
            part_size=storage.part_size,
        )
    )
    temp = storage.temp_dir or data_dir / "tmp"
    return BlobStore(
        backend,
        sessions=PartUploads(backend, meta(), BlobStore.blob_key, storage.part_size),
        spool=LocalSpool(temp / "spool", temp / "locks"),
    )
