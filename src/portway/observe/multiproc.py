"""prometheus-client's multiprocess files: one folder per server run under the data folder.

Every worker of one `portway serve` writes its own files into `<data>/metrics/run-<pid>-<t>`,
where pid and t (its start time in clock ticks since boot) are those of the process that
started the workers (the worker itself with `workers = 1`): workers restarted by that parent
keep adding to the same totals, a new server run starts from zero. At start a worker removes
the folders of runs whose parent is gone, and from time to time marks the live gauges of dead
workers of its own run as dead, so they leave the sums.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_RUN_RE = re.compile(r"^run-(\d+)-(\d+)$")
_FILE_RE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_owner() -> int:
    """The pid whose run this process belongs to: the parent of spawned workers, else itself."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getpid()


def prepare(root: Path) -> Path:
    """Create this run's folder under `root`, remove folders of finished runs, return it."""
    owner = run_owner()
    started = _start_time(owner) or 0
    folder = root / f"run-{owner}-{started}"
    root.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():
        m = _RUN_RE.match(other.name)
        if m is None or other == folder:
            continue
        if _start_time(int(m.group(1))) != int(m.group(2)):
            shutil.rmtree(other, ignore_errors=True)
    folder.mkdir(exist_ok=True)
    return folder


def mark_dead_workers(folder: Path) -> int:
    """Drop the live gauges of processes of this run that are gone; returns how many."""
    from prometheus_client import multiprocess

    dead = 0
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            m = _FILE_RE.match(path.name)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and not _alive(pid):
                multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
                dead += 1
    return dead
