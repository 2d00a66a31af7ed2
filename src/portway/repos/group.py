"""Group repository: ordered members, one read view; pushes go to the writable member.

Per-member lookups end in `_permember`; the plain methods merge them.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from portway.config import RepositoryConfig
from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.names import lookup_reference
from portway.repos.base import BlobBody, Manifest, Repository
from portway.repos.hosted import HostedRepository
from portway.repos.proxy_errors import UpstreamProblem
from portway.repos.search import page_of

log = logging.getLogger("portway.group")

# Errors that mean "this member does not have it": try the next member.
_ABSENT = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})
ALL_RESULTS = 10_000  # what one member contributes to a merged search, before paging


def resolution_order(group: str, members_of: Mapping[str, Sequence[str]]) -> list[str]:
    """The leaf (hosted and proxy) repositories of a group, depth-first in declared order,
    each once. `members_of` maps every group to its members; a name absent from it is a leaf.
    Raises ValueError on a cycle."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"group cycle: {' -> '.join((*path, name))}")
        members = members_of.get(name)
        if members is None:
            if name not in seen:
                seen.add(name)
                order.append(name)
            return
        for member in members:
            visit(member, (*path, name))

    visit(group, ())
    return order


class GroupRepository:
    kind = "group"

    def __init__(
        self,
        config: RepositoryConfig,
        members: Sequence[Repository],
        writable_member: HostedRepository | None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.members = list(members)
        self._writable = writable_member

    # -- which members to ask ----------------------------------------------------------
    async def _members_for(self, image: str) -> list[Repository]:
        """Hosted members first claim an image: once one holds it, proxies are not asked
        (dependency confusion), unless the group allows proxy shadowing."""
        if self.config.allow_proxy_shadowing:
            return self.members
        hosted = [m for m in self.members if isinstance(m, HostedRepository)]
        for member in hosted:
            if await member.holds_image(image):
                return list(hosted)
        return self.members

    # -- manifests ---------------------------------------------------------------------
    async def get_manifest(self, image: str, reference: str, accept: Sequence[str]) -> Manifest:
        reference = lookup_reference(reference)
        outcomes: list[str] = []
        for member in await self._members_for(image):
            try:
                return await member.get_manifest(image, reference, accept)
            except RegistryError as err:
                outcomes.append(self._outcome(member, err))
        # No member has it: what each said, as a 404 (clients print a 4xx's message; ADR 0011).
        raise RegistryError("MANIFEST_UNKNOWN", _joined(outcomes))

    def _outcome(self, member: Repository, err: RegistryError) -> str:
        """`not in NAME`, or `NAME: what went wrong` (logged: an upstream problem)."""
        if err.code in _ABSENT and not isinstance(err, UpstreamProblem):
            return f"not in {member.name}"
        log.warning("group %s: member %s: %s", self.name, member.name, err.message)
        return f"{member.name}: {err.outcome if isinstance(err, UpstreamProblem) else err.message}"

    # -- blobs -------------------------------------------------------------------------
    async def _blob_member(self, image: str, digest: Digest) -> Repository:
        """The first member, in resolution order, that holds the blob; else the first that
        knows where it is (a proxy whose cached manifest names it); else the first proxy
        whose upstream has it (asked with a HEAD)."""
        members = await self._members_for(image)
        for member in members:
            if await member.has_blob(image, digest):
                return member
        for member in members:
            if await member.serves_blob(image, digest):
                return member
        outcomes: list[str] = []
        for member in members:
            if member.kind != "proxy":
                outcomes.append(f"not in {member.name}")
                continue
            try:
                await member.stat_blob(image, digest)
            except RegistryError as err:
                outcomes.append(self._outcome(member, err))
                continue
            return member
        raise RegistryError("BLOB_UNKNOWN", f"blob {digest}: {_joined(outcomes)}")

    async def has_blob(self, image: str, digest: Digest) -> bool:
        for member in await self._members_for(image):
            if await member.has_blob(image, digest):
                return True
        return False

    async def serves_blob(self, image: str, digest: Digest) -> bool:
        for member in await self._members_for(image):
            if await member.serves_blob(image, digest):
                return True
        return False

    async def stat_blob(self, image: str, digest: Digest) -> int:
        return await (await self._blob_member(image, digest)).stat_blob(image, digest)

    async def open_blob(self, image: str, digest: Digest) -> BlobBody:
        return await (await self._blob_member(image, digest)).open_blob(image, digest)

    # -- listings ----------------------------------------------------------------------
    async def list_tags(self, image: str, last: str | None, n: int | None) -> list[str]:
        pages: list[list[str]] = []
        found = False
        for member in await self._members_for(image):
            try:
                pages.append(await member.list_tags(image, last, n))
                found = True
            except RegistryError as err:
                if err.code not in _ABSENT:
                    log.warning("group %s: member %s: %s", self.name, member.name, err.message)
        if not found:
            raise RegistryError("NAME_UNKNOWN", f"image {image!r} not found")
        return _merge(pages, n)

    async def catalog(self, last: str | None, n: int | None) -> list[str]:
        return _merge([await m.catalog(last, n) for m in self.members], n)

    async def referrers(
        self, image: str, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for member in await self._members_for(image):
            for entry in await member.referrers(image, digest, artifact_type):
                if entry["digest"] not in seen:
                    seen.add(entry["digest"])
                    out.append(entry)
        return out

    async def search(self, query: str, n: int, page: int) -> dict[str, Any] | None:
        """Names from every member (hosted first, as ordered), each name once."""
        seen: set[str] = set()
        results: list[dict[str, Any]] = []
        for member in self.members:
            if not member.config.v1_enabled:
                continue
            try:
                found = await member.search(query, ALL_RESULTS, 1)
            except RegistryError as err:
                log.warning("group %s: search in %s: %s", self.name, member.name, err.message)
                continue
            for entry in found["results"] if found else []:
                if entry.get("name") not in seen:
                    seen.add(entry.get("name"))
                    results.append(entry)
        return page_of(query, results, n, page)

    # -- writes ------------------------------------------------------------------------
    def writable(self) -> HostedRepository:
        if self._writable is None:
            raise RegistryError(
                "DENIED",
                f"group repository {self.name!r} has no writable_member; push to a hosted "
                "repository",
            )
        return self._writable.with_mount_sources(self.members)


def _joined(outcomes: list[str]) -> str:
    """`not in a, b; c: upstream ... unreachable (...)`: runs of absences share one `not in`."""
    parts: list[str] = []
    for outcome in outcomes:
        if parts and outcome.startswith("not in ") and parts[-1].startswith("not in "):
            parts[-1] += ", " + outcome.removeprefix("not in ")
        else:
            parts.append(outcome)
    return "; ".join(parts) or "no member to ask"


def _merge(pages: list[list[str]], n: int | None) -> list[str]:
    """Sorted, deduplicated union of sorted pages, cut to n."""
    out: list[str] = []
    for name in heapq.merge(*(sorted(p) for p in pages)):
        if not out or out[-1] != name:
            out.append(name)
            if n is not None and len(out) >= n:
                break
    return out
