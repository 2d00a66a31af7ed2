"""A child process in its own process group, logged to a file, stopped by PID."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

START_MARK = "=== start: "  # written to the log before each start, then the command


class ProcessError(RuntimeError):
    """A helper process failed to start or to become ready; the message carries its log."""


_STARTED: list[ManagedProcess] = []


def stop_all() -> list[str]:
    """Stop every process still running that this module started; names what was left over."""
    leftovers = [p for p in _STARTED if p.alive()]
    for proc in leftovers:
        proc.stop()
    _STARTED.clear()
    return [f"{p.argv[0]} (pid {p.pid})" for p in leftovers]


class ManagedProcess:
    """Runs `argv` with stdout and stderr appended to `log_path`.

    The child leads a new session, so `stop()` and `kill()` reach every process it forked
    (workers, helpers) through the process group, and nothing else.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        if self.alive():
            raise ProcessError(f"already running: {self.argv[0]} (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n{START_MARK}{' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        if self not in _STARTED:
            _STARTED.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready()` until it holds; fail early, with the log, if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessError(
                    f"{self.argv[0]} exited with {self.proc.returncode} before {what}:\n"
                    + self.log()[-4000:]
                )
            if ready():
                return
            time.sleep(0.05)
        raise ProcessError(
            f"{self.argv[0]}: no {what} within {timeout:.0f}s:\n" + self.log()[-4000:]
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after `timeout` seconds; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._reap_group()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        self._reap_group()

    def _reap_group(self, timeout: float = 5.0) -> None:
        """Children may outlive the leader for a moment; give them a grace period, then kill."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_has_live_members(self.proc.pid):
                return
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)


def _group_has_live_members(pgid: int) -> bool:
    """Whether any non-zombie process still belongs to process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True once anything at `url` answers HTTP, whatever the status."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError, http.client.HTTPException):
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True once something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
