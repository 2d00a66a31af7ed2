"""Send bytes from one socket to a client's with splice(2), through a pipe: the kernel moves
them, Python never holds them (the streamed pull from S3; portway.storage.s3raw)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031  # fcntl(2), Linux
SPLICE_FLAGS = 1 | 2  # SPLICE_F_MOVE | SPLICE_F_NONBLOCK
IDLE = 60.0  # seconds without progress either way: the storage or the client is stuck


async def splice_all(src: int, dst: int, count: int) -> None:
    """Move `count` bytes from socket `src` to socket `dst` (both non-blocking; the caller
    owns them). ConnectionResetError when the client went away, ConnectionError when the
    source ended early, TimeoutError when nothing moved for IDLE seconds."""
    loop = asyncio.get_running_loop()
    out = os.dup(dst)  # the client's transport keeps its own fd in the selector
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    size = PIPE_SIZE
    try:
        try:
            size = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            size = 64 * 1024  # the default pipe
        left, piped = count, 0
        while left or piped:
            moved = False
            if left and piped < size:
                try:
                    n = os.splice(src, w, min(left, size - piped), flags=SPLICE_FLAGS)
                except BlockingIOError:
                    pass
                else:
                    if n == 0:
                        raise ConnectionError(f"storage ended the body {left} bytes short")
                    left, piped, moved = left - n, piped + n, True
            if piped:
                try:
                    n = os.splice(r, out, piped, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError) as exc:
                    raise ConnectionResetError("client went away") from exc
                else:
                    piped, moved = piped - n, True
            if not moved:
                await _ready(loop, src if left and piped < size else None, out if piped else None)
    finally:
        os.close(r)
        os.close(w)
        os.close(out)


async def _ready(
    loop: asyncio.AbstractEventLoop, readable: int | None, writable: int | None
) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if readable is not None:
        loop.add_reader(readable, wake)
    if writable is not None:
        loop.add_writer(writable, wake)
    try:
        async with asyncio.timeout(IDLE):
            await waiter
    finally:
        if readable is not None:
            loop.remove_reader(readable)
        if writable is not None:
            with contextlib.suppress(Exception):
                loop.remove_writer(writable)
