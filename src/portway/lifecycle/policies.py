"""Cleanup policies: which tags and manifests of one image a policy removes (pure code).

`select_removals` decides from rows alone, so the dry run and the run share it. An image's
index, its children and its referrers stay together: removing a manifest removes its
referrers (signatures, SBOMs) and the children no other kept manifest needs, never a child
a kept index still lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from portway.config import CleanupPolicyConfig

DAY = 86400.0
_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    digest: str
    updated: float  # when the tag was last set


@dataclass(frozen=True, slots=True)
class ManifestRow:
    digest: str
    created: float
    subject: str | None = None
    children: tuple[str, ...] = ()
    last_pull: float | None = None


@dataclass
class ImageRows:
    image: str
    tags: list[TagRow] = field(default_factory=list)
    manifests: dict[str, ManifestRow] = field(default_factory=dict)


@dataclass
class Removal:
    tags: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)


def semver_key(tag: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]] | None:
    """Sort key of a semantic version (1.2.3, v1.2.3-rc.1); None for other tags. A release
    sorts above its pre-releases, numeric identifiers numerically (semver.org, 11)."""
    m = _SEMVER.match(tag)
    if m is None:
        return None
    pre = m.group(4)
    idents: tuple[tuple[int, int | str], ...] = ()
    if pre:
        idents = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, idents)


def _newest_first(tags: Sequence[TagRow], order: str) -> list[TagRow]:
    by_time = sorted(tags, key=lambda t: (t.updated, t.name), reverse=True)
    if order != "semver":
        return by_time
    versioned = [t for t in by_time if semver_key(t.name) is not None]
    versioned.sort(key=lambda t: semver_key(t.name), reverse=True)  # type: ignore[arg-type,return-value]
    return versioned + [t for t in by_time if semver_key(t.name) is None]  # others: oldest


def _matches(pattern: str, text: str) -> bool:
    return not pattern or re.fullmatch(pattern, text) is not None


def is_protected(tag: str, protected: Iterable[str]) -> bool:
    return any(re.fullmatch(p, tag) for p in protected)


def select_removals(
    policy: CleanupPolicyConfig,
    rows: ImageRows,
    now: float,
    protected: Iterable[str] = (),
    proxy: bool = False,
) -> Removal:
    """What `policy` removes from one image. `protected`: the protected tags of every policy
    of the repository (no policy removes them)."""
    out = Removal()
    if policy.images and re.search(policy.images, rows.image) is None:
        return out
    guarded = (*protected, *policy.protected)
    out.tags = _tags_to_remove(policy, rows, now, guarded)
    tagged_after = {t.digest for t in rows.tags if t.name not in out.tags}
    lost = {t.digest for t in rows.tags if t.name in out.tags} - tagged_after
    parents = _parents(rows)
    doomed = {d for d in lost if not parents.get(d)}
    if policy.untagged_days is not None:
        every_tagged = {t.digest for t in rows.tags}
        for m in rows.manifests.values():
            if m.digest in every_tagged or parents.get(m.digest):
                continue
            if m.subject and m.subject in rows.manifests:
                continue  # a referrer of a subject that is there: it goes with its subject
            if now - m.created > policy.untagged_days * DAY:
                doomed.add(m.digest)
    if proxy and policy.cache_expiry_days is not None:
        for m in rows.manifests.values():
            used = max(
                [m.created, m.last_pull or 0.0]
                + [t.updated for t in rows.tags if t.digest == m.digest]
            )
            if now - used > policy.cache_expiry_days * DAY and not parents.get(m.digest):
                doomed.add(m.digest)
    out.manifests = _together(rows, doomed, parents, guarded, tagged_after)
    out.tags |= {t.name for t in rows.tags if t.digest in out.manifests}
    return out


def _tags_to_remove(
    policy: CleanupPolicyConfig, rows: ImageRows, now: float, guarded: Sequence[str]
) -> set[str]:
    criteria = (policy.keep_last, policy.older_than_days, policy.not_pulled_days)
    if all(c is None for c in criteria):
        return set()
    considered = [
        t
        for t in rows.tags
        if _matches(policy.include, t.name)
        and not (policy.exclude and re.fullmatch(policy.exclude, t.name))
        and not is_protected(t.name, guarded)
    ]
    ordered = _newest_first(considered, policy.order)
    eligible = ordered[policy.keep_last :] if policy.keep_last is not None else ordered
    out = set()
    for t in eligible:
        if policy.older_than_days is not None and now - t.updated <= policy.older_than_days * DAY:
            continue
        if policy.not_pulled_days is not None:
            pulled = rows.manifests.get(t.digest)
            last = max(t.updated, (pulled.last_pull or 0.0) if pulled else 0.0)
            if now - last <= policy.not_pulled_days * DAY:
                continue
        out.add(t.name)
    return out


def _parents(rows: ImageRows) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = {}
    for m in rows.manifests.values():
        for child in m.children:
            parents.setdefault(child, set()).add(m.digest)
    return parents


def _together(
    rows: ImageRows,
    doomed: set[str],
    parents: dict[str, set[str]],
    guarded: Sequence[str],
    tagged_after: set[str],
) -> set[str]:
    """`doomed` with the referrers of each and the children nothing kept needs."""
    kept_by_tag = {t.digest for t in rows.tags if is_protected(t.name, guarded)}
    out = {d for d in doomed if d not in kept_by_tag}
    changed = True
    while changed:
        changed = False
        for m in rows.manifests.values():
            if m.digest in out or m.digest in kept_by_tag:
                continue
            if m.subject and m.subject in out:
                out.add(m.digest)  # a signature or SBOM of a removed manifest
                changed = True
            elif m.digest in parents and parents[m.digest] <= out and m.digest not in tagged_after:
                out.add(m.digest)  # a child only removed indexes listed
                changed = True
    return out
