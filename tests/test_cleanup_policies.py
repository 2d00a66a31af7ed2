"""Cleanup policies, case by case: each row names a policy, an image's tags and manifests, and
the exact tags and manifests it removes. Then the same decisions through the real stores
(SQLite and PostgreSQL), where the dry run's set equals the run's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gc_support import World, open_world
from portway.config import CleanupPolicyConfig, parse_settings
from portway.lifecycle.cleanup import Cleanup
from portway.lifecycle.policies import ImageRows, ManifestRow, TagRow, select_removals, semver_key
from push_support import sha256

NOW = 1_000_000_000.0
DAY = 86400.0


def m(n: int) -> str:
    return f"sha256:{n:064x}"


def image(
    tags: dict[str, tuple[int, float]],
    manifests: dict[int, dict[str, Any]] | None = None,
) -> ImageRows:
    """tags: name -> (manifest number, age in days); manifests: number -> ManifestRow fields
    (ages in days); a manifest a tag names exists, 100 days old, unless described."""
    rows = ImageRows("app")
    for name, (n, age) in tags.items():
        rows.tags.append(TagRow(name, m(n), NOW - age * DAY))
    described = manifests or {}
    numbers = {n for n, _ in tags.values()} | set(described)
    for n in sorted(numbers):
        spec = described.get(n, {})
        pulled = spec.get("pulled")
        rows.manifests[m(n)] = ManifestRow(
            m(n),
            NOW - spec.get("age", 100) * DAY,
            m(spec["subject"]) if "subject" in spec else None,
            tuple(m(c) for c in spec.get("children", ())),
            None if pulled is None else NOW - pulled * DAY,
        )
    return rows


SIX = {f"1.{k}.0": (k, 10 - k) for k in range(6)}  # 1.0.0 oldest ... 1.5.0 newest

CASES: list[tuple[str, dict[str, Any], ImageRows, set[str], set[int], bool]] = [
    (
        "keep last 2 by time",
        {"keep_last": 2},
        image(SIX),
        {"1.0.0", "1.1.0", "1.2.0", "1.3.0"},
        {0, 1, 2, 3},
        False,
    ),
    (
        "keep last 2 by semver, not by time",
        {"keep_last": 2, "order": "semver"},
        image(
            {
                "1.10.0": (1, 9),
                "1.9.0": (2, 1),
                "1.2.0": (3, 0),
                "2.0.0-rc.1": (4, 0),
                "latest": (5, 0),
            }
        ),
        {"1.9.0", "1.2.0", "latest"},
        {2, 3, 5},
        False,
    ),
    (
        "older than 5 days",
        {"older_than_days": 5},
        image(SIX),
        {"1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"},
        {0, 1, 2, 3, 4},
        False,
    ),
    (
        "keep 4, and only what is older than 7 days",
        {"keep_last": 4, "older_than_days": 7},
        image(SIX),
        {"1.0.0", "1.1.0"},
        {0, 1},
        False,
    ),
    (
        "not pulled for 30 days (a recent pull by digest keeps it)",
        {"not_pulled_days": 30},
        image({"a": (1, 90), "b": (2, 90), "c": (3, 1)}, {1: {"pulled": 40}, 2: {"pulled": 2}}),
        {"a"},
        {1},
        False,
    ),
    (
        "include and exclude regular expressions",
        {"include": r"dev-.*", "exclude": r"dev-keep.*", "older_than_days": 1},
        image({"dev-1": (1, 5), "dev-keep-2": (2, 5), "release-3": (3, 5)}),
        {"dev-1"},
        {1},
        False,
    ),
    (
        "protected tags are never removed",
        {"older_than_days": 1, "protected": ["latest", "stable-.*"]},
        image({"latest": (1, 50), "stable-2": (2, 50), "old": (3, 50)}),
        {"old"},
        {3},
        False,
    ),
    (
        "a tag removed from a manifest another tag keeps removes no manifest",
        {"keep_last": 1},
        image({"new": (1, 1), "old": (1, 9)}),
        {"old"},
        set(),
        False,
    ),
    (
        "untagged after 7 days, not a child or a referrer of a kept subject",
        {"untagged_days": 7},
        image(
            {"v1": (1, 1)},
            {
                1: {"children": (2,)},
                2: {"age": 30},  # child of a tagged index: stays
                3: {"age": 30},  # untagged, old: goes
                4: {"age": 2},  # untagged, young: stays
                5: {"age": 30, "subject": 1},  # signature of v1: stays
            },
        ),
        set(),
        {3},
        False,
    ),
    (
        "a multi-arch index goes with its children and referrers, not a shared child",
        {"older_than_days": 1},
        image(
            {"multi": (1, 10), "other": (6, 0)},
            {
                1: {"children": (2, 3)},
                2: {},
                3: {},
                4: {"subject": 1},  # signature of the index
                5: {"subject": 4},  # a referrer of that signature
                6: {"children": (3,)},  # a kept index still needs child 3
            },
        ),
        {"multi"},
        {1, 2, 4, 5},
        False,
    ),
    (
        "a tagged signature goes with its image",
        {"older_than_days": 1, "include": "v.*"},
        image({"v1": (1, 10), "sha256-x.sig": (2, 0)}, {2: {"subject": 1}}),
        {"v1", "sha256-x.sig"},
        {1, 2},
        False,
    ),
    (
        "proxy cache expiry by last use: a digest pull counts",
        {"cache_expiry_days": 30},
        image(
            {"latest": (1, 60)},
            {1: {"age": 60}, 2: {"age": 60, "pulled": 3}, 3: {"age": 60}, 4: {"age": 5}},
        ),
        {"latest"},
        {1, 3},
        True,
    ),
    (
        "cache expiry does nothing in a hosted repository",
        {"cache_expiry_days": 30},
        image({"latest": (1, 60)}, {1: {"age": 60}}),
        set(),
        set(),
        False,
    ),
    ("images filter", {"images": "^other$", "older_than_days": 0}, image(SIX), set(), set(), False),
]


@pytest.mark.parametrize(
    ("name", "policy", "rows", "tags", "manifests", "proxy"), CASES, ids=[c[0] for c in CASES]
)
def test_policy_removes_exactly(
    name: str,
    policy: dict[str, Any],
    rows: ImageRows,
    tags: set[str],
    manifests: set[int],
    proxy: bool,
) -> None:
    removal = select_removals(CleanupPolicyConfig(name="p", **policy), rows, NOW, proxy=proxy)
    assert removal.tags == tags
    assert removal.manifests == {m(n) for n in manifests}


def test_semver_order() -> None:
    ordered = sorted(
        ["1.0.0", "1.0.0-rc.1", "1.0.0-rc.10", "1.0.0-rc.2", "0.9.9", "v1.1.0"], key=semver_key
    )  # type: ignore[arg-type,return-value]
    assert ordered == ["0.9.9", "1.0.0-rc.1", "1.0.0-rc.2", "1.0.0-rc.10", "1.0.0", "v1.1.0"]
    assert semver_key("latest") is None


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    url = (
        f"sqlite:///{tmp_path / 'portway.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    w = open_world(url, tmp_path)
    yield w
    w.close()


def test_cleanup_through_the_stores_dry_run_equals_run(world: World) -> None:
    settings = parse_settings(
        {
            "cleanup_policy": [{"name": "keep-2", "keep_last": 2, "protected": ["v0"]}],
            "repository": [
                {"name": "docker-hosted", "type": "hosted", "cleanup_policies": ["keep-2"]}
            ],
        },
        {},
    )

    async def scenario() -> None:
        digests = []
        for k in range(5):
            digests.append(await world.push_image("app", f"v{k}", [f"layer {k}".encode()]))
            await asyncio.sleep(0.01)  # distinct tag times
        cleanup = Cleanup(settings, world.meta, world.repo.guard)
        dry = await cleanup.run(dry_run=True)
        real = await cleanup.run()
        assert dry.removed() == real.removed()
        assert {t for _, _, t in real.tags} == {"v1", "v2"}
        assert {d for _, _, d in real.manifests} == {digests[1], digests[2]}
        assert sorted(await world.meta.list_tags(world.repo.repo_id, "app", None, None)) == [
            "v0",
            "v3",
            "v4",
        ]
        assert (await cleanup.run(dry_run=True)).removed() == set()
        await asyncio.sleep(0.6)  # the removed images' layers are garbage now
        gone = (await world.gc()).deleted()
        assert {g[1] for g in gone if g[0] == "blob"} >= {
            sha256(f"layer {k}".encode()) for k in (1, 2)
        }

    asyncio.run(scenario())
