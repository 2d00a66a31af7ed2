"""The /etc/hosts helper the host-mapping tests use (tests/support/hosts.py), on a scratch file:
two test runs on one machine adding the same name never take out each other's line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from support.hosts import etc_hosts, resolves_locally

TESTS = Path(__file__).resolve().parent
NAME = "shared.example.test"
# Another test run: maps NAME, says "in", waits for a line on stdin, leaves, says "out".
OTHER_RUN = """
import sys
from pathlib import Path
from support.hosts import etc_hosts
with etc_hosts(sys.argv[1], path=Path(sys.argv[2]), lock=Path(sys.argv[3])):
    print("in", flush=True)
    sys.stdin.readline()
print("out", flush=True)
"""


def test_another_run_leaving_keeps_our_line_for_the_same_name(tmp_path: Path) -> None:
    hosts, lock = tmp_path / "hosts", tmp_path / "lock"
    original = b"127.0.0.1 localhost\n"
    hosts.write_bytes(original)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RUN, NAME, str(hosts), str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "in"
        with etc_hosts(NAME, path=hosts, lock=lock) as added:
            assert added == [NAME]
            assert hosts.read_text().count(NAME) == 2  # one line per run, told apart by tag
            other.stdin.write("go\n")
            other.stdin.flush()
            assert other.stdout.readline().strip() == "out"
            assert other.wait(30) == 0
            assert resolves_locally(NAME, hosts), hosts.read_text()
            assert hosts.read_text().count(NAME) == 1
        assert hosts.read_bytes() == original
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_two_threads_adding_the_same_name_keep_each_others_line(tmp_path: Path) -> None:
    """Nesting is per thread: another thread's block adds a line of its own, and the first
    block leaving (before the other) takes out only its own."""
    hosts, lock = tmp_path / "hosts", tmp_path / "lock"
    original = b"127.0.0.1 localhost\n::1 localhost\n"
    hosts.write_bytes(original)
    entered, leave = threading.Event(), threading.Event()

    def other_block() -> None:
        with etc_hosts(NAME, path=hosts, lock=lock):
            entered.set()
            leave.wait(30)

    first = etc_hosts(NAME, path=hosts, lock=lock)
    assert first.__enter__() == [NAME]
    thread = threading.Thread(target=other_block)
    thread.start()
    try:
        assert entered.wait(30)
        assert hosts.read_text().count(NAME) == 2
    finally:
        first.__exit__(None, None, None)
    assert resolves_locally(NAME, hosts), hosts.read_text()
    leave.set()
    thread.join(30)
    assert hosts.read_bytes() == original
