"""The composition root (ADR 17): the only place that constructs stores; a repository
registry that a running server rebuilds without a restart; services that store a change and
its audit record together; nothing made before it is needed."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import portway
from portway.auth.store_base import StoreError
from portway.compose import Portway
from portway.config import RepositoryConfig, Settings, parse_settings
from portway.http.app import build_app
from portway.http.context import AllowAll
from push_support import OCI_MANIFEST, manifest_for, sha256

SRC = Path(portway.__file__).parent
ROOT = SRC / "compose.py"
STORES = {"MetadataStore", "BlobStore", "UserStore", "open_metadata"}


def _constructions(source: str) -> list[tuple[int, str]]:
    """(line, what) of each `MetadataStore(...)`, `BlobStore(...)`, `UserStore(...)` or
    `MetadataStore.open_*(...)` call, or of `open_metadata(...)` (db/store.py's factory), in
    `source`, however the name was imported."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute):
            if func.attr in STORES:  # module.UserStore(...)
                name = func.attr
            elif func.attr.startswith("open") and isinstance(func.value, ast.Name | ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else func.value.attr
                name = f"{owner}.{func.attr}" if owner in STORES else None
        if name is not None and name.split(".")[0] in STORES:
            found.append((node.lineno, name))
    return found


def test_the_check_sees_every_way_of_constructing_a_store() -> None:
    sample = (
        "import portway.auth.store as s\n"
        "a = MetadataStore.open_sqlite(p)\n"
        "b = BlobStore(FilesystemBackend(p))\n"
        "c = s.UserStore(engine)\n"
        "d = MetadataStore(read, write, 5)\n"
        "e = BlobStoreConfig()\n"
    )
    assert [what for _, what in _constructions(sample)] == [
        "MetadataStore.open_sqlite",
        "BlobStore",
        "UserStore",
        "MetadataStore",
    ]


def test_nothing_outside_the_composition_root_constructs_a_store() -> None:
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        if path != ROOT
        for line, what in _constructions(path.read_text())
        # The stores' own factories, which only the composition root calls: the metadata
        # store's module (its factory and class methods) and the blob store's opener.
        if path.relative_to(SRC).as_posix() not in ("db/store.py", "storage/open.py")
    ]
    assert offenders == [], "stores are built in portway/compose.py only"
    assert _constructions(ROOT.read_text()), "the composition root builds them"


def _settings(tmp_path: Path, security: bool = False) -> Settings:
    return parse_settings(
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "security": {"enabled": security},
            "repository": [
                {"name": "alpha", "type": "hosted", "path_routing": True},
                {"name": "beta", "type": "hosted"},
            ],
        },
        environ={},
    )


def test_reading_commands_make_nothing_they_do_not_use(tmp_path: Path) -> None:
    """`portway key list` opens no database; `portway repo list` creates no admin account."""
    settings = _settings(tmp_path, security=True)
    data = settings.server.data_dir
    with Portway(settings) as root:
        root.keyring.rotate()
        assert root.keys.list()[1]
        assert root.blobs.backend is not None  # a folder's blob store needs no database
    assert not (data / "portway.db").exists()
    with Portway(settings) as root:
        ctx = root.context(AllowAll())
        assert sorted(ctx.repos) == ["alpha", "beta"]
    assert (data / "portway.db").exists() and not (data / "admin.password").exists()
    with Portway(settings) as root:
        authorizer, password = root.security()
        assert authorizer is not None and password is not None
        assert root.security() == (authorizer, password)  # built once


def _audit(settings: Settings) -> list[dict[str, Any]]:
    path = settings.server.data_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_user_change_and_its_audit_record_go_together(tmp_path: Path) -> None:
    settings = _settings(tmp_path, security=True)
    with Portway(settings) as root:
        root.users.add("ci", "long-enough-1", ["anonymous"], actor="api:admin")
        with pytest.raises(StoreError):
            root.users.add("ci", "long-enough-2", [], actor="api:admin")  # exists: no record
        with pytest.raises(StoreError):
            root.users.unlock("nobody", None, actor="cli")
        assert root.users.unlock("ci", "10.0.0.9", actor="cli") == 0
        root.users.set_disabled("ci", True, actor="cli")
        assert [u.disabled for u in root.users.list() if u.name == "ci"] == [True]
    events = [(r["event"], r["principal"], r["detail"]) for r in _audit(settings)]
    assert events == [
        ("user.add", "api:admin", {"user": "ci", "roles": ["anonymous"]}),
        ("user.unlock", "cli", {"user": "ci", "address": "10.0.0.9"}),
        ("user.disable", "cli", {"user": "ci"}),
    ]


# -- the registry, rebuilt while a server runs ----------------------------------------------


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def _push_image(session: aiohttp.ClientSession, base: str) -> int:
    """A config blob, then a manifest over it; the manifest PUT's status."""
    config = b"{}"
    async with session.post(f"{base}/blobs/uploads/?digest={sha256(config)}", data=config) as r:
        assert r.status == 201
    headers = {"Content-Type": OCI_MANIFEST}
    body = manifest_for(config, [])
    async with session.put(f"{base}/manifests/1", data=body, headers=headers) as response:
        return response.status


def test_a_rebuilt_registry_routes_a_new_repository_and_drops_a_removed_one(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    root = Portway(settings)
    ctx = root.context()
    ctx.routes.bind_port(54321, "beta", None)  # a connector's binding, as open_listeners makes
    alpha = ctx.repos["alpha"]

    async def scenario() -> None:
        server = TestServer(build_app(ctx))
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            assert await _status(session, f"{url}/repository/gamma/v2/") == 404
            assert await _status(session, f"{url}/repository/beta/v2/") == 200

            gamma = RepositoryConfig(name="gamma", type="hosted", path_routing=True)
            first = ctx.snapshot
            kept = tuple(d for d in first.definitions if d.name != "beta")
            snapshot = await root.apply_repositories((*kept, gamma))
            assert ctx.snapshot is snapshot and snapshot.generation == first.generation + 1
            assert first.config("beta") is not None and "beta" in first.repos  # left as it was

            assert await _status(session, f"{url}/repository/gamma/v2/") == 200
            assert await _push_image(session, f"{url}/repository/gamma/v2/img") == 201
            assert await _status(session, f"{url}/repository/beta/v2/") == 404
            async with session.get(f"{url}/v2/_catalog") as response:
                assert (await response.json())["repositories"] == ["gamma/img"]
        await server.close()

    asyncio.run(scenario())
    assert ctx.repos["alpha"] is alpha  # unchanged definition: the same repository object
    assert ctx.routes.ports[54321].repository == "beta"  # the listeners' bindings stay
    root.close()


def test_a_rebuild_the_file_could_not_declare_changes_nothing(tmp_path: Path) -> None:
    root = Portway(_settings(tmp_path))
    ctx = root.context()
    before = ctx.snapshot
    group = RepositoryConfig(name="all", type="group", members=("alpha", "missing"))
    with pytest.raises(ValueError, match="unknown member"):
        asyncio.run(root.apply_repositories((*before.definitions, group)))
    assert ctx.snapshot is before
    root.close()
