"""What the serving path tells the collector, and what it asks (ADR 0025).

Repositories call these at the few places where garbage can appear or where a client is told
that something exists:

- `hold(...)` before an existence answer a push relies on (blob HEAD, the blobs and children a
  manifest PUT checks): when what it answers for is a candidate, a hold is written first, so
  the collector leaves it alone for `gc_hold` seconds. Nothing is written otherwise: the
  collector only acts on candidates older than `gc_hold`, so an answer given before a
  candidate appeared stays true for that long anyway.
- `claim(...)` before a blob's bytes are published for a new link (upload commit, monolithic
  upload, mount, proxy cache fill): the new link becomes a candidate (nobody references it
  yet), then the blob's state is read: a blob being deleted is waited for, a deleted one is
  revived. The collector, after marking a blob `deleting`, re-reads candidates, links and
  holds, and backs off if one appeared: one side always sees the other.
- `removing_manifest`, `removing_tag`, `removed_link` before or after the /v2 DELETEs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from sqlalchemy import Connection, select

from portway.db.lifecycle import (
    BLOB,
    DELETING,
    LINK,
    LIVE,
    MANIFEST,
    candidate_keys,
    note_candidates,
    record_pulls,
    set_state,
    state_of,
    write_holds,
)
from portway.db.schema import manifest_refs, manifests, tags
from portway.db.store import MetadataStore
from portway.oci.errors import RegistryError

log = logging.getLogger("portway.lifecycle")

DEFAULT_HOLD = 3600.0
PULL_FLUSH_EVERY = 30.0  # seconds between batched writes of last-pull times
CLAIM_WAIT = 10.0  # seconds a push waits for a deletion in progress before a retryable error


class Guard:
    def __init__(self, meta: MetadataStore, hold: float = DEFAULT_HOLD) -> None:
        self.meta = meta
        self.hold_seconds = hold
        self._pulls: dict[tuple[int, str, str], float] = {}
        self._next_flush = time.monotonic() + PULL_FLUSH_EVERY
        self._flushing: asyncio.Future[None] | None = None

    def pulled(self, repo_id: int, image: str, digest: str) -> None:
        """A manifest was served (by tag or digest): remembered in memory, written with the
        others at most every PULL_FLUSH_EVERY seconds, never one write per pull."""
        self._pulls[(repo_id, image, digest)] = time.time()
        if self._flushing is None and time.monotonic() >= self._next_flush:
            self._flushing = asyncio.ensure_future(self.flush_pulls())

    async def flush_pulls(self) -> None:
        pulls, self._pulls = self._pulls, {}
        dialect = self.meta.dialect
        try:
            if pulls:
                await self.meta._write(lambda conn: record_pulls(dialect, conn, pulls))
        except Exception as exc:  # a busy or full database: keep them for the next flush
            log.warning("last-pull times not recorded yet: %s", exc)
            for key, when in pulls.items():
                self._pulls[key] = max(when, self._pulls.get(key, 0.0))
        finally:
            self._next_flush = time.monotonic() + PULL_FLUSH_EVERY
            self._flushing = None

    async def hold(self, repo_id: int, image: str, digests: Sequence[str]) -> None:
        """Protect what an existence answer is about to vouch for, if it is a candidate."""
        meta = self.meta
        found = await meta._read(lambda conn: candidate_keys(conn, repo_id, image, digests))
        if not found:
            return
        until = time.time() + self.hold_seconds
        dialect = meta.dialect
        keys = sorted(found)
        await meta._write(lambda conn: write_holds(dialect, conn, repo_id, image, keys, until))

    async def claim(self, repo_id: int, image: str, digest: str) -> None:
        """Before publishing bytes for a new link of `digest` into this image."""
        meta = self.meta
        dialect = meta.dialect
        now = time.time()
        row = [(repo_id, image, digest, LINK)]
        await meta._write(lambda conn: note_candidates(dialect, conn, row, now))
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            state = await meta._read(lambda conn: state_of(conn, digest))
            if state is None or state[0] == LIVE:
                return
            if state[0] != DELETING:  # gone, or quarantined by fsck: the new bytes heal it
                if await self._revive(digest, state) is not None:
                    return
                continue
            if time.monotonic() > deadline:
                raise RegistryError(
                    "BLOB_UNKNOWN",
                    f"blob {digest} is being deleted by garbage collection right now; "
                    "retry the upload",
                    status=503,
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(0.05)

    async def _revive(self, digest: str, seen: tuple[str, int]) -> int | None:
        dialect = self.meta.dialect
        return await self.meta._write(lambda conn: set_state(dialect, conn, digest, LIVE, seen))

    async def removing_manifest(self, repo_id: int, image: str, digest: str) -> None:
        """Before a manifest is deleted: its blobs, children and referrers become candidates
        (written first, so a crash after the delete leaves nothing untracked)."""
        await self._note(await self.meta._read(lambda conn: _held_by(conn, repo_id, image, digest)))

    async def removing_tag(self, repo_id: int, image: str, tag: str) -> None:
        """Before a tag is deleted: the manifest it points at becomes a candidate (deleted
        once no tag, index or subject needs it)."""
        where = (tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
        row = await self.meta._one(select(tags.c.digest).where(*where), "removing_tag")
        if row is not None:
            await self._note([(repo_id, image, str(row[0]), MANIFEST)])

    async def removed_link(self, repo_id: int, image: str, digest: str) -> None:
        """After a blob link was deleted (/v2 blob DELETE): the blob may be garbage now."""
        await self._note([(0, "", digest, BLOB)])

    async def _note(self, rows: list[tuple[int, str, str, str]]) -> None:
        if not rows:
            return
        dialect = self.meta.dialect
        now = time.time()
        await self.meta._write(lambda conn: note_candidates(dialect, conn, rows, now))


def _held_by(
    conn: Connection, repo_id: int, image: str, digest: str
) -> list[tuple[int, str, str, str]]:
    """What a manifest holds: its blobs and children, and the manifests it is the subject of."""
    rows: list[tuple[int, str, str, str]] = [
        (repo_id, image, ref, MANIFEST if is_manifest else LINK)
        for ref, is_manifest in conn.execute(
            select(manifest_refs.c.ref, manifest_refs.c.is_manifest).where(
                manifest_refs.c.repo_id == repo_id,
                manifest_refs.c.image == image,
                manifest_refs.c.manifest == digest,
            )
        )
    ]
    rows += [
        (repo_id, image, r[0], MANIFEST)
        for r in conn.execute(
            select(manifests.c.digest).where(
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.subject == digest,
            )
        )
    ]
    return rows
