"""Apply a repository's cleanup policies: read its rows, decide (policies.py), delete.

Tags go through the same path as a /v2 tag DELETE and manifests as a /v2 manifest DELETE, so
what they held becomes garbage for the next `portway gc` pass. The dry run is the decision
without the deletes. Asked to stop (`checkpoint`, looked at before each image), a run ends
between two images: every tag and manifest it removed is removed as a /v2 DELETE would.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Connection, select

from portway.config import CleanupPolicyConfig, RepositoryConfig, Settings
from portway.db.lifecycle import manifest_pulls
from portway.db.schema import manifest_refs, manifests, tags
from portway.db.store import MetadataStore
from portway.lifecycle.guard import Guard
from portway.lifecycle.policies import ImageRows, ManifestRow, TagRow, select_removals


@dataclass
class CleanupReport:
    dry_run: bool
    tags: list[tuple[str, str, str]] = field(default_factory=list)  # repository, image, tag
    manifests: list[tuple[str, str, str]] = field(default_factory=list)  # ..., digest
    stopped: bool = False  # asked to stop: images were left for the next run

    def removed(self) -> set[tuple[str, ...]]:
        return {("tag", *t) for t in self.tags} | {("manifest", *m) for m in self.manifests}


def read_images(conn: Connection, repo_id: int) -> dict[str, ImageRows]:
    images: dict[str, ImageRows] = {}
    children: dict[tuple[str, str], list[str]] = {}
    for image, parent, child in conn.execute(
        select(manifest_refs.c.image, manifest_refs.c.manifest, manifest_refs.c.ref).where(
            manifest_refs.c.repo_id == repo_id, manifest_refs.c.is_manifest == 1
        )
    ):
        children.setdefault((image, parent), []).append(child)
    pulls = {
        (str(r[0]), str(r[1])): float(r[2])
        for r in conn.execute(
            select(manifest_pulls.c.image, manifest_pulls.c.digest, manifest_pulls.c.last).where(
                manifest_pulls.c.repo_id == repo_id
            )
        )
    }
    for image, digest, created, subject in conn.execute(
        select(
            manifests.c.image, manifests.c.digest, manifests.c.created, manifests.c.subject
        ).where(manifests.c.repo_id == repo_id)
    ):
        rows = images.setdefault(image, ImageRows(image))
        rows.manifests[digest] = ManifestRow(
            digest,
            float(created),
            subject,
            tuple(sorted(children.get((image, digest), ()))),
            pulls.get((image, digest)),
        )
    for image, name, digest, updated in conn.execute(
        select(tags.c.image, tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id
        )
    ):
        images.setdefault(image, ImageRows(image)).tags.append(TagRow(name, digest, float(updated)))
    return images


class Cleanup:
    def __init__(self, settings: Settings, meta: MetadataStore, guard: Guard) -> None:
        self.settings = settings
        self.meta = meta
        self.guard = guard
        # The repository's id; the web UI's dry run passes the serving registry's ids.
        self.repo_id_of: Callable[[RepositoryConfig], int] = lambda cfg: meta.ensure_repository(
            cfg.name, cfg.type
        )

    def policies_of(self, repository: str, only: str | None) -> list[CleanupPolicyConfig]:
        cfg = self.settings.repo(repository)
        if cfg is None:
            return []
        by_name = {p.name: p for p in self.settings.cleanup_policy}
        return [by_name[n] for n in cfg.cleanup_policies if only is None or n == only]

    async def run(
        self,
        dry_run: bool = False,
        policy: str | None = None,
        checkpoint: Callable[[], Awaitable[bool]] | None = None,
    ) -> CleanupReport:
        report = CleanupReport(dry_run=dry_run)
        now = time.time()
        for cfg in self.settings.repository:
            policies = self.policies_of(cfg.name, policy)
            if not policies:
                continue
            repo_id = self.repo_id_of(cfg)
            images = await self.meta._read(partial(read_images, repo_id=repo_id))
            protected = [p for pol in self.policies_of(cfg.name, None) for p in pol.protected]
            for rows in images.values():
                if checkpoint is not None and await checkpoint():
                    report.stopped = True
                    return report
                tag_names: set[str] = set()
                digests: set[str] = set()
                for pol in policies:
                    removal = select_removals(pol, rows, now, protected, cfg.type == "proxy")
                    tag_names |= removal.tags
                    digests |= removal.manifests
                report.tags += [(cfg.name, rows.image, t) for t in sorted(tag_names)]
                report.manifests += [(cfg.name, rows.image, d) for d in sorted(digests)]
                if not dry_run:
                    await self._apply(repo_id, rows.image, sorted(tag_names), sorted(digests))
        return report

    async def _apply(
        self, repo_id: int, image: str, tag_names: Sequence[str], digests: Sequence[str]
    ) -> None:
        for tag in tag_names:
            await self.guard.removing_tag(repo_id, image, tag)
            await self.meta.delete_tag(repo_id, image, tag, lambda _tag, _current: None)
        for digest in digests:
            await self.guard.removing_manifest(repo_id, image, digest)
            await self.meta.delete_manifest(repo_id, image, digest)
