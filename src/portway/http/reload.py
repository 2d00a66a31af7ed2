"""SIGHUP: read the configuration file again and apply what a running worker can change.

Applied at once: the file's `[[repository]]`, `[[connector]]` and `[[host]]` tables (the
set is rebuilt as an admin API change is, ADR 17; those made through the API stay; the
listener holder opens and closes connectors, ADR 27) and `[server] log_level`, `access_log`
and `log_format`. Everything else that changed (listen, workers, data_dir, `[database]`,
`[storage]`, `[security]`, ...) is named in one warning line and left as it was until a
restart. A file that does not load, or a repository set that
does not fit, is refused with an error line and the configuration in service stays.

`portway serve` hands the file's path to its workers in `PORTWAY_CONFIG_FILE`; with several
workers the parent re-reads the file too (workers it starts later get the new settings) and
forwards SIGHUP to each worker. A SIGHUP that comes while a process is still starting (before
its event loop or the supervisor's loop handles it) is remembered and applied once it can be
(`hold_signal`, `held`): a worker that was starting when the operator reloaded does not serve
the old file after the others applied the new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from portway.config import ConfigError, RepositoryConfig, ServerConfig, Settings, load_settings

if TYPE_CHECKING:
    from portway.http.observe import Observer

log = logging.getLogger("portway.reload")

ENV = "PORTWAY_CONFIG_FILE"
APPLIED_SERVER_KEYS = ("log_level", "access_log", "log_format")


class Reloadable(Protocol):
    settings: Settings

    async def apply_repositories(
        self, definitions: tuple[RepositoryConfig, ...], network: Any = None
    ) -> Any: ...


class _Held:
    hup = False


def _remember(_signum: int, _frame: Any) -> None:
    _Held.hup = True


def hold_signal() -> None:
    """Until this process can reload, remember a SIGHUP (see `held`) instead of losing it;
    one that came while it was blocked (`sighup_blocked` in the parent) is remembered too."""
    _Held.hup = False
    signal.signal(signal.SIGHUP, _remember)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


@contextmanager
def sighup_blocked() -> Iterator[None]:
    """SIGHUP blocked in this thread (a child started here starts with it blocked)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def held() -> bool:
    """Whether a SIGHUP came while held; forgets it (the caller reloads now)."""
    got, _Held.hup = _Held.hup, False
    return got


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
    for section in ("cleanup_policy", "job"):
        if getattr(old, section) != getattr(new, section):
            restart.append(section)
    server = old.server.model_copy(
        update={key: getattr(new.server, key) for key in APPLIED_SERVER_KEYS}
    )
    merged = old.model_copy(
        update={
            "server": server,
            "repository": new.repository,
            "connector": new.connector,
            "host": new.host,
        }
    )
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


def reconfigure_access_log(obs: Observer, server: ServerConfig) -> None:
    """`[server] access_log` and `log_format` as the file now says."""
    if obs.access is not None:
        obs.journal.drain()  # what came before is written as the file said before
        obs.access.reconfigure(server.log_format, server.access_log)
    elif server.access_log:
        log.warning("SIGHUP: the access log was off with metrics off; it starts at a restart")


def on_signal(
    root: Any, tasks: set[asyncio.Task[None]], after: Callable[[Settings], None] | None = None
) -> None:
    """The worker's SIGHUP handler; `root` is its composition root (a `Reloadable`); `after`
    gets the settings once they are applied."""
    task = asyncio.get_running_loop().create_task(reload_worker(root, after))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def reload_worker(root: Reloadable, after: Callable[[Settings], None] | None = None) -> None:
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
    definitions, network = settings.repository, (settings.connector, settings.host)
    if admin is not None:  # the file's definitions and those made through the API
        _file_settings(admin, settings)
        definitions = await asyncio.to_thread(admin.initial)  # database reads
        network = admin.network()
    try:
        await root.apply_repositories(definitions, network)
    except ValueError as exc:
        log.error("SIGHUP: %s not applied, the repositories in service stay: %s", path, exc)
        if admin is not None:
            _file_settings(admin, root.settings)
        return
    root.settings = settings
    set_log_level(settings)
    if after is not None:
        after(settings)
    names = ", ".join(r.name for r in definitions)
    log.info("SIGHUP: %s applied; repositories: %s; connectors: %d, hosts: %d", path, names,
             len(network[0]), len(network[1]))  # fmt: skip
    if restart:
        log.warning("SIGHUP: changed but applied only at a restart: %s", ", ".join(restart))


def _file_settings(admin: Any, settings: Settings) -> None:
    """The repository and access services' idea of what the file declares."""
    admin.settings = settings
    admin.file_names = frozenset(r.name for r in settings.repository)
    if getattr(admin, "access", None) is not None:
        admin.access.set_file(settings)
