"""Publish each proxy repository's upstream health (the auto-block breaker) to a small JSON
file in the data directory, so `portway repo show` — another process — can report it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from portway.repos.base import Repository
from portway.repos.proxy import ProxyRepository

INTERVAL = 2.0


def state_path(data_dir: Path, repository: str) -> Path:
    return data_dir / "state" / f"proxy-{repository}.json"


def snapshot(repo: Repository) -> dict[str, Any] | None:
    """A proxy repository's upstream health as JSON-ready values; None for other kinds."""
    if not isinstance(repo, ProxyRepository):
        return None
    state = asdict(repo.breaker_state())
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in state.items()}


def write_state(data_dir: Path, repository: str, state: dict[str, Any]) -> None:
    path = state_path(data_dir, repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**state, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_state(data_dir: Path, repository: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(state_path(data_dir, repository).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


async def publish_loop(repos: Callable[[], Mapping[str, Repository]], data_dir: Path) -> None:
    """`repos`: the repositories in service now (they change when the registry is rebuilt)."""
    last: dict[str, dict[str, Any]] = {}
    while True:
        for name, repo in repos().items():
            state = snapshot(repo)
            if state is not None and state != last.get(name):
                await asyncio.to_thread(write_state, data_dir, name, state)
                last[name] = state
        await asyncio.sleep(INTERVAL)
