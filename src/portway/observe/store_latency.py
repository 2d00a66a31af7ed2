"""How long the metadata database and the blob storage backend took, for /metrics.

Timed at one seam each: the metadata store's read and write calls (portway.db.base, the
operation named by the store method that made the call), and the blob backends' protocol
methods (`timed_backend` on the filesystem and S3 classes). A call costs a
`time.perf_counter()` pair and a few additions to plain numbers; `Recorder.flush` moves what
was added since its last flush into the multiprocess files (`LatencyFamilies`).

Database calls and file writes also run in threads (PostgreSQL reads, the writer thread's
callers elsewhere, file writes in worker threads), so each thread adds to a table of its own
that only it changes: no lock, no lost count. The flush copies each table (one C call under
the GIL) and moves the difference from its previous copy, so a count a thread is adding
while the flush reads lands in the next flush, never twice and never lost.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import inspect
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf,
)  # fmt: skip
_FIRST_BUCKET = 2  # a row: [seconds, errors, calls per bucket...]

# A backend method -> the operation it counts as (the `operation` label's values).
STORAGE_OPERATIONS = {
    "stat": "stat",
    "read": "read",  # a stream: the time spent waiting for the backend over all of it
    "open_raw": "read_open",  # S3: a GET up to its headers (the body is spliced to the client)
    "list": "list",  # a stream, as `read`
    "create": "create",
    "writer": "append_open",  # filesystem: an upload's file opened and locked for appending
    "write": "write",
    "writev_sync": "write",
    "close": "close",
    "commit": "commit",
    "abort": "abort",
    "move": "move",
    "copy": "copy",
    "delete": "delete",
    "presign_get": "presign",
    "begin_parts": "begin_parts",
    "put_part": "put_part",
    "complete_parts": "complete_parts",
    "pending_writes": "pending_writes",
    "abort_pending": "abort_pending",
}


class LatencyEvents:
    """Durations by key (a tuple of label values), summed per thread since the start."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tables: list[dict[tuple[str, ...], list[float]]] = []
        self._seen: dict[tuple[int, tuple[str, ...]], list[float]] = {}

    def _row(self, key: tuple[str, ...]) -> list[float]:
        table: dict[tuple[str, ...], list[float]] | None = getattr(self._local, "table", None)
        if table is None:
            table = self._local.table = {}
            self._tables.append(table)  # list.append holds the GIL: no lock needed
        row = table[key] = [0.0] * (_FIRST_BUCKET + len(LATENCY_BUCKETS))
        return row

    def observe(self, key: tuple[str, ...], seconds: float, failed: bool = False) -> None:
        """One call of `seconds` (the hot path: no lock, no I/O)."""
        try:
            row = self._local.table[key]
        except (AttributeError, KeyError):
            row = self._row(key)
        row[0] += seconds
        row[_FIRST_BUCKET + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if failed:
            row[1] += 1

    def take(self) -> dict[tuple[str, ...], list[float]]:
        """What every thread added since the last `take`: key -> [seconds, errors, calls per
        bucket], summed over the threads (one taker: `Recorder.flush`)."""
        out: dict[tuple[str, ...], list[float]] = {}
        for index, table in enumerate(list(self._tables)):
            for key, row in table.copy().items():
                now = row.copy()
                seen = self._seen.get((index, key))
                if seen == now:
                    continue
                self._seen[(index, key)] = now
                delta = now if seen is None else [a - b for a, b in zip(now, seen, strict=True)]
                total = out.get(key)
                if total is not None:
                    delta = [a + b for a, b in zip(total, delta, strict=True)]
                out[key] = delta
        return out


database_latency = LatencyEvents()  # (operation, access) -> ...; this process's
storage_latency = LatencyEvents()  # (backend, operation) -> ...; this process's

_operations: dict[str, str] = {}  # a function's qualified name -> the store method it is in


def database_operation(fn: Callable[..., object]) -> str:
    """The store method a read or write function belongs to: `manifest_by_tag` for
    `MetadataStore.manifest_by_tag.<locals>.load` (names from the code: a bounded set)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return "other"
    qualname: str = code.co_qualname
    name = _operations.get(qualname)
    if name is None:
        name = _operations[qualname] = qualname.split(".<locals>", 1)[0].rpartition(".")[2]
    return name


def timed_backend(
    backend: str, *methods: str, answers: tuple[type[Exception], ...] = ()
) -> Callable[[C], C]:
    """Class decorator: time the class's own methods named in `methods` (by default every
    one in STORAGE_OPERATIONS it defines) as `(backend, operation)` in `storage_latency`.
    A missing object (FileNotFoundError) and the `answers` are no errors: a refusal the
    caller expects, not a failing store."""
    expected: tuple[type[Exception], ...] = (FileNotFoundError, *answers)

    def apply(cls: C) -> C:
        names = methods or tuple(m for m in STORAGE_OPERATIONS if m in cls.__dict__)
        for name in names:
            key = (backend, STORAGE_OPERATIONS[name])
            setattr(cls, name, _timed(cls.__dict__[name], key, expected))
        return cls

    return apply


def _timed(fn: Any, key: tuple[str, str], expected: tuple[type[Exception], ...]) -> Any:
    observe, clock = storage_latency.observe, time.perf_counter

    def _failed(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and not isinstance(exc, expected)

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            inner = fn(*args, **kwargs)
            waited, failed = 0.0, False
            try:
                while True:
                    start = clock()
                    try:
                        item = await anext(inner)
                    except StopAsyncIteration:
                        break
                    finally:
                        waited += clock() - start
                    yield item
            except BaseException as exc:
                failed = _failed(exc)
                raise
            finally:
                await inner.aclose()
                observe(key, waited, failed)

        return stream
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                observe(key, clock() - start, _failed(exc))
                raise
            observe(key, clock() - start)
            return result

        return coroutine

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            observe(key, clock() - start, _failed(exc))
            raise
        observe(key, clock() - start)
        return result

    return call


class LatencyFamilies:
    """The latency families of one worker's `Recorder` (prometheus-client multiprocess files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.database = Histogram(
            "portway_database_operation_duration_seconds",
            "Metadata database calls as the caller waited for them (queueing for the writer "
            "or a read thread included), by store operation and access (read, write)",
            ["operation", "access"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.database_errors = Counter(
            "portway_database_operation_errors",
            "Metadata database calls that failed with a database error (busy, full, lost "
            "connection...)",
            ["operation", "access"],
            registry=None,
        )
        self.storage = Histogram(
            "portway_storage_operation_duration_seconds",
            "Blob storage backend calls, by backend (filesystem, s3) and operation; a read "
            "or list counts the time spent waiting for the backend over the whole stream",
            ["backend", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.storage_errors = Counter(
            "portway_storage_operation_errors",
            "Blob storage backend calls that raised an error (a missing object is no error)",
            ["backend", "operation"],
            registry=None,
        )

    def flush(self) -> None:
        from portway.observe.metrics import _observe

        for events, histogram, errors in (
            (database_latency, self.database, self.database_errors),
            (storage_latency, self.storage, self.storage_errors),
        ):
            for key, row in events.take().items():
                _observe(histogram.labels(*key), row[0], [int(n) for n in row[_FIRST_BUCKET:]])
                if row[1]:
                    errors.labels(*key).inc(row[1])


@contextlib.contextmanager
def timed_database(operation: str, access: str) -> Iterator[None]:
    """Time the block as one database call `(operation, access)` in `database_latency`: the
    synchronous stores' seam (users, roles, refresh tokens, job records), as
    portway.db.base's `_read`/`_write` are the metadata store's. A database error
    (SQLAlchemyError) counts as an error; a refusal raised inside the block does not.
    Operations are fixed names from the code: a bounded label set."""
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:  # a duplicate name is an answer, not a failing database
        failed = isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError)
        database_latency.observe((operation, access), time.perf_counter() - start, failed)
        raise
    database_latency.observe((operation, access), time.perf_counter() - start)


def database_call(operation: str, access: str) -> Callable[[F], F]:
    """Decorator: each call of the function is one `timed_database(operation, access)`."""

    def apply(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with timed_database(operation, access):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return apply
