"""The running SHA-256 of an upload session, recorded on the session file (ADR 34).

A worker that appended to a session keeps its running hash in memory (RunningHashes). When
the closing PUT reaches another worker of the same host, that worker has no hash and would
read the whole session back. So, after each append, the appending worker records the
digest of the bytes so far as an extended attribute of the session file:
`<boot id> <offset> <hex>`. It does this under the session's lock, after the data has been
written.

A record counts only if it was made since the machine last started (the boot id) and
covers exactly the file's current size. Bytes written before a crash of the whole machine
may not have reached the disk, so after a reboot the bytes are hashed again. Another node
that shares the folder has another boot id, so it hashes again too. A session only grows,
apart from being cut back to where a failed append began, so an old record can never match
a larger size. A filesystem without user extended attributes records nothing, and then the
stored bytes are hashed again, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os

ATTRIBUTE = "user.portway.sha256"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@functools.cache
def boot_id() -> str | None:
    """This boot of the machine, or None where the kernel does not say (then nothing is
    recorded)."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def record(fd: int, offset: int, hexdigest: str) -> None:
    """Record that the first `offset` bytes of the open session file hash to `hexdigest`."""
    boot = boot_id()
    if boot is None:
        return
    with contextlib.suppress(OSError):  # no user xattrs here, or no room for one
        os.setxattr(fd, ATTRIBUTE, f"{boot} {offset} {hexdigest}".encode())


def recorded(fd: int, size: int) -> str | None:
    """The recorded SHA-256 of the session file when it covers all `size` bytes and was made
    since this boot, else None."""
    boot = boot_id()
    if boot is None:
        return None
    try:
        value = os.getxattr(fd, ATTRIBUTE).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != boot or parts[1] != str(size) or len(parts[2]) != 64:
        return None
    return parts[2]
