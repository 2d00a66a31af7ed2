"""SIGHUP: read the configuration file again and apply what a running worker can change.

Applied at once: the file's `[[repository]]` tables (the repository set is rebuilt as an
admin API change is, ADR 17; repositories made through the API stay) and `[server]
log_level`. Everything else that changed (listen, workers, data_dir, `[database]`,
`[storage]`, `[security]`, connectors, hosts, the access log, ...) is named in one warning
line and left as it was until a restart. A file that does not load, or a repository set that
does not fit, is refused with an error line and the configuration in service stays.

`portway serve` hands the file's path to its workers in `PORTWAY_CONFIG_FILE`; with several
workers the parent re-reads the file too (workers it starts later get the new settings) and
forwards SIGHUP to each worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from portway.config import ConfigError, RepositoryConfig, Settings, load_settings

log = logging.getLogger("portway.reload")

ENV = "PORTWAY_CONFIG_FILE"
APPLIED_SERVER_KEYS = frozenset({"log_level"})


class Reloadable(Protocol):
    settings: Settings

    async def apply_repositories(self, definitions: tuple[RepositoryConfig, ...]) -> Any: ...


def config_file() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _changed(old: BaseModel, new: BaseModel, prefix: str) -> list[str]:
    return [
        f"{prefix}.{name}"
        for name in type(old).model_fields
        if getattr(old, name) != getattr(new, name)
    ]


def merge(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """`old` with what can change while running taken from `new`, and the names of the keys
    that changed but need a restart."""
    restart = [
        key
        for key in _changed(old.server, new.server, "server")
        if key.removeprefix("server.") not in APPLIED_SERVER_KEYS
    ]
    for section in ("security", "database", "storage", "jobs"):
        restart += _changed(getattr(old, section), getattr(new, section), section)
    for section in ("connector", "host", "cleanup_policy", "job"):
        if getattr(old, section) != getattr(new, section):
            restart.append(section)
    server = old.server.model_copy(update={"log_level": new.server.log_level})
    merged = old.model_copy(update={"server": server, "repository": new.repository})
    Settings.model_validate(merged.model_dump())  # the kept connectors still fit
    return merged, restart


def read(path: Path, current: Settings) -> tuple[Settings, list[str]] | None:
    """The merged settings, or None (with an error line) when the file is refused."""
    try:
        return merge(current, load_settings(path))
    except (ConfigError, ValueError) as exc:
        log.error("SIGHUP: not applied, the configuration in service stays: %s", exc)
        return None


def set_log_level(settings: Settings) -> None:
    logging.getLogger().setLevel(settings.server.log_level.upper())


def on_signal(root: Any, tasks: set[asyncio.Task[None]]) -> None:
    """The worker's SIGHUP handler; `root` is its composition root (a `Reloadable`)."""
    task = asyncio.get_running_loop().create_task(reload_worker(root))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def reload_worker(root: Reloadable) -> None:
    """One worker's reload (run as a task on its event loop)."""
    path = config_file()
    if path is None:
        log.warning("SIGHUP: started without --config, there is no file to read again")
        return
    got = read(path, root.settings)
    if got is None:
        return
    settings, restart = got
    admin = getattr(root, "repository_admin", None)
    definitions = settings.repository
    if admin is not None:  # the file's repositories and those made through the API
        admin.settings = settings
        admin.file_names = frozenset(r.name for r in settings.repository)
        definitions = admin.initial()
    try:
        await root.apply_repositories(definitions)
    except ValueError as exc:
        log.error("SIGHUP: %s not applied, the repositories in service stay: %s", path, exc)
        if admin is not None:
            admin.settings = root.settings
            admin.file_names = frozenset(r.name for r in root.settings.repository)
        return
    root.settings = settings
    set_log_level(settings)
    names = ", ".join(r.name for r in definitions)
    log.info("SIGHUP: %s applied; repositories: %s", path, names)
    if restart:
        log.warning("SIGHUP: changed but applied only at a restart: %s", ", ".join(restart))
