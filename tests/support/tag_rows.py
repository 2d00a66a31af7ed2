"""A metadata store holding exactly the tags `images` x `names` of one hosted repository,
written straight into the table (each tag its own digest, pushed in that order)."""

from __future__ import annotations

from collections.abc import Sequence

from portway.db.schema import tags
from portway.db.store import MetadataStore, open_metadata


def store_with_tags(url: str, images: Sequence[str], names: Sequence[str]) -> MetadataStore:
    meta = open_metadata(url)
    repo_id = meta.ensure_repository("hosted", "hosted")
    rows = [
        {"repo_id": repo_id, "image": image, "name": name, "digest": f"sha256:{n:064x}",
         "updated": float(n)}
        for n, (image, name) in enumerate((i, t) for i in images for t in names)
    ]  # fmt: skip
    with meta.engine.begin() as conn:
        conn.execute(tags.delete())
        conn.execute(tags.insert(), rows)
    return meta
