"""Copying between spool files for a proxy's cache fill: a worker mirrors the spool of the
worker that fetches a blob, and the `urls` a manifest gives for a non-distributable layer."""

from __future__ import annotations

import asyncio
import json
import os

from portway.coordination.interfaces import Lock
from portway.upstream.crossworker import POLL_MAX, POLL_MIN, SpoolNotice
from portway.upstream.singleflight import Spool


async def mirror(lock: Lock, notice: SpoolNotice, spool: Spool) -> None:
    """Another worker holds `lock` and fetches the blob: copy its spool file into ours as it
    grows (our clients are served meanwhile), until the lock is ours."""
    source: int | None = None
    delay = POLL_MIN
    try:
        while not await lock.try_acquire():
            if source is None:
                source = open_noticed(notice, spool)
            moved = await copy_growing(source, spool) if source is not None else 0
            delay = POLL_MIN if moved else min(delay * 2, POLL_MAX)
            await asyncio.sleep(delay)
    finally:
        if source is not None:
            os.close(source)


def open_noticed(notice: SpoolNotice, spool: Spool) -> int | None:
    """The holder's spool file, opened, once its notice is out (the length goes to our
    spool); None before that, or when it has just finished and removed it (then the lock
    tells what became of it)."""
    found = notice.read()
    if found is None:
        return None
    try:
        source = os.open(found[0], os.O_RDONLY)
    except FileNotFoundError:
        return None
    if not spool.started:
        spool.set_size(found[1])
    return source


async def copy_growing(source: int, spool: Spool) -> int:
    """Append what `source` holds past the spool's length; returns the bytes copied."""
    copied = 0
    while data := os.pread(source, 1024 * 1024, spool.written):
        await spool.write(data)
        copied += len(data)
    return copied


def foreign_urls(manifest_body: bytes, digest: str) -> list[str]:
    """The `urls` a manifest gives for its layer `digest` (a non-distributable layer)."""
    try:
        doc = json.loads(manifest_body)
    except ValueError:
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("digest") == digest:
            urls = layer.get("urls")
            return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
    return []
