"""The benchmark rows: a registry of functions, each measuring one thing on one target.

A row function takes the run's `Context` and one `Target` (Portway or distribution) and
returns a `Measurement`, or `None` when the row does not apply to that side. To add a row
(for instance a proxy or group warm pull later), decorate a function with `@row(...)`; a row
that needs more servers (a Portway proxy repository in front of a distribution, say) starts
them itself under `ctx.workdir` and registers them with `ctx.on_close` so they are stopped.
Rows run in registration order; `bench/run.py --only NAME` picks some.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import OCI_MANIFEST, build_layout, layer_prefixes
from ops import (
    TransferClient,
    auth_headers,
    check_get,
    log_in,
    push_small_image,
    skopeo_copy,
    wrk,
)
from servers import Target

MiB = 1 << 20


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    blob_count: int
    blob_size: int
    chunk: int
    wrk_duration: int
    wrk_threads: int
    wrk_connections: int
    image_layers: int
    layer_size: int
    image_reps: int
    monolithic_mode: str  # "monolithic" (POST then PUT with body) or "post-digest"

    @classmethod
    def make(cls, quick: bool, monolithic_mode: str = "monolithic") -> BenchConfig:
        if quick:
            return cls(quick, 4, 16 * MiB, 8 * MiB, 3, 2, 64, 4, 2 * MiB, 1, monolithic_mode)
        return cls(quick, 8, 64 * MiB, 8 * MiB, 10, 2, 64, 4, 8 * MiB, 3, monolithic_mode)


@dataclass
class Measurement:
    """A row's value on one side, and what the server spent on it.

    `work` is the amount done in the timed part, in the row's cost unit (GB moved, requests,
    images), and `cpu_s` the server's CPU seconds over that same part; their quotient is a
    cost per unit of work that holds up on a busy machine, where rates do not.
    """

    value: float
    detail: dict[str, Any] = field(default_factory=dict)
    work: float | None = None
    cpu_s: float | None = None

    def cost(self, scale: float) -> float | None:
        if not self.work or self.cpu_s is None:
            return None
        return self.cpu_s / self.work * scale


@dataclass
class Context:
    config: BenchConfig
    client: TransferClient
    workdir: Path
    cache: Path
    nonce: str
    cpu_probes: dict[str, Callable[[], float]] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    _seq: int = 0

    def seq(self) -> int:
        """A number not used before in this run (unique blob suffixes, image names, folders)."""
        self._seq += 1
        return self._seq

    def server_cpu(self, t: Target) -> float | None:
        """Cumulative CPU seconds of the server behind `t` (None when it is not ours)."""
        probe = self.cpu_probes.get(t.name)
        return probe() if probe is not None else None

    def of(self, t: Target) -> dict[str, Any]:
        return self.state.setdefault(t.name, {})

    def on_close(self, fn: Callable[[], None]) -> None:
        self.closers.append(fn)


RowFn = Callable[[Context, Target], Measurement | None]


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    unit: str
    higher_is_better: bool
    target: float | None  # ratio Portway/distribution asked for (Portway with security on)
    fn: RowFn
    cost_unit: str = ""  # server CPU per unit of work, e.g. "CPU s/GB"
    cost_scale: float = 1.0
    vs_off: float | None = None  # ratio Portway security on / security off asked for

    def met(self, ratio: float, target: float | None = None) -> bool | None:
        """Is `ratio` within `target` (default: the target against distribution)?"""
        goal = self.target if target is None else target
        if goal is None:
            return None
        return ratio >= goal if self.higher_is_better else ratio <= goal

    def target_text(self, target: float | None = None) -> str:
        goal = self.target if target is None else target
        if goal is None:
            return "-"
        return f"≥ {goal:g}x" if self.higher_is_better else f"≤ {goal:g}x time"


ROWS: dict[str, Row] = {}


COST_UNITS = {"MB/s": ("CPU s/GB", 1.0), "req/s": ("CPU us/req", 1e6), "s": ("CPU s/image", 1.0)}


def row(
    name: str,
    *,
    title: str,
    unit: str,
    higher_is_better: bool = True,
    target: float | None = None,
    vs_off: float | None = None,
) -> Callable[[RowFn], RowFn]:
    def register(fn: RowFn) -> RowFn:
        if name in ROWS:
            raise ValueError(f"row {name!r} registered twice")
        cost_unit, cost_scale = COST_UNITS.get(unit, ("", 1.0))
        ROWS[name] = Row(
            name, title, unit, higher_is_better, target, fn, cost_unit, cost_scale, vs_off
        )
        return fn

    return register


# --------------------------------------------------------------------------- blob transfers


def _cpu_delta(ctx: Context, t: Target, before: float | None) -> float | None:
    after = ctx.server_cpu(t)
    return None if before is None or after is None else after - before


def _settle_disk() -> None:
    """Flush dirty pages so one side's writes are not written back during the other's turn."""
    os.sync()


def _push(ctx: Context, t: Target, mode: str, concurrency: int, label: str) -> Measurement:
    cfg = ctx.config
    image = f"bench/{label}"
    auth = auth_headers(t, image, "pull,push")  # the token first, outside the timed part
    _settle_disk()
    cpu0 = ctx.server_cpu(t)
    r = ctx.client.call(
        {
            "op": "push",
            "host": t.host,
            "port": t.port,
            "api": t.api,
            "image": image,
            "mode": mode,
            "chunk": cfg.chunk,
            "count": cfg.blob_count,
            "concurrency": concurrency,
            "tag": f"{ctx.nonce}/{t.name}/{label}/{ctx.seq()}",
            "headers": auth,
        }
    )
    cpu = _cpu_delta(ctx, t, cpu0)
    ctx.of(t).setdefault("pushed", []).append((image, r["digests"]))
    return Measurement(
        r["bytes"] / r["seconds"] / 1e6,
        {
            "seconds": round(r["seconds"], 3),
            "bytes": r["bytes"],
            "blobs": cfg.blob_count,
            "concurrency": concurrency,
            "mode": mode,
        },
        work=r["bytes"] / 1e9,
        cpu_s=cpu,
    )


def _push_row(name: str, title: str, mode: str, concurrency: int) -> None:
    def fn(ctx: Context, t: Target) -> Measurement:
        m = mode if mode == "chunked" else ctx.config.monolithic_mode
        if m == "post-digest" and not t.single_post:
            m = "monolithic"  # distribution 2.8 answers 202 before reading a POST body
        return _push(ctx, t, m, concurrency, name)

    fn.__name__ = f"row_{name.replace('-', '_')}"
    row(name, title=title, unit="MB/s", target=2.5)(fn)


_push_row("push", "monolithic push, 1 stream", "monolithic", 1)
_push_row("push-c4", "monolithic push, 4 streams", "monolithic", 4)
_push_row("chunked", "chunked push (8 MiB PATCH), 1 stream", "chunked", 1)
_push_row("chunked-c4", "chunked push (8 MiB PATCH), 4 streams", "chunked", 4)


def _pushed(ctx: Context, t: Target) -> tuple[str, list[str]]:
    pushed: list[tuple[str, list[str]]] = ctx.of(t).get("pushed", [])
    if not pushed:
        _push(ctx, t, "monolithic", 4, "pull-source")
        pushed = ctx.of(t)["pushed"]
    return pushed[0]


def _pull(ctx: Context, t: Target, concurrency: int) -> Measurement:
    image, digests = _pushed(ctx, t)
    base = {
        "op": "pull",
        "host": t.host,
        "port": t.port,
        "api": t.api,
        "image": image,
        "headers": auth_headers(t, image),
    }
    cpu0 = ctx.server_cpu(t)
    r = ctx.client.call({**base, "digests": digests, "concurrency": concurrency})
    cpu = _cpu_delta(ctx, t, cpu0)
    # Untimed: one blob read back and hashed, so a fast wrong answer cannot win.
    ctx.client.call({**base, "digests": digests[:1], "concurrency": 1, "verify": True})
    return Measurement(
        r["bytes"] / r["seconds"] / 1e6,
        {"seconds": round(r["seconds"], 3), "bytes": r["bytes"], "concurrency": concurrency},
        work=r["bytes"] / 1e9,
        cpu_s=cpu,
    )


@row("pull", title="blob pull, 1 stream", unit="MB/s", target=2.0)
def row_pull(ctx: Context, t: Target) -> Measurement:
    return _pull(ctx, t, 1)


@row("pull-c4", title="blob pull, 4 streams", unit="MB/s", target=2.0)
def row_pull_c4(ctx: Context, t: Target) -> Measurement:
    return _pull(ctx, t, 4)


# --------------------------------------------------------------------------- request rates


def _small(ctx: Context, t: Target) -> Any:
    st = ctx.of(t)
    if "small" not in st:
        st["small"] = push_small_image(t, "bench/small", f"{ctx.nonce}/{t.name}")
    return st["small"]


def _wrk(ctx: Context, t: Target, url: str, headers: dict[str, str] | None = None) -> Measurement:
    cfg = ctx.config
    cpu0 = ctx.server_cpu(t)
    r = wrk(url, cfg.wrk_duration, cfg.wrk_threads, cfg.wrk_connections, headers)
    cpu = _cpu_delta(ctx, t, cpu0)
    return Measurement(
        r.requests_per_s,
        {
            "requests": r.requests,
            "latency_avg": r.latency_avg,
            "socket_errors": r.socket_errors,
            "duration_s": cfg.wrk_duration,
        },
        work=r.requests,
        cpu_s=cpu,
    )


@row(
    "manifest-get",
    title="manifest GET by tag (wrk -c64)",
    unit="req/s",
    target=10.0,
    vs_off=0.9,
)
def row_manifest_get(ctx: Context, t: Target) -> Measurement:
    img = _small(ctx, t)
    path = t.path(img.image, f"manifests/{img.tag}")
    check_get(t, path, img.manifest, OCI_MANIFEST, img.image)
    return _wrk(ctx, t, t.base + path, {"Accept": OCI_MANIFEST, **auth_headers(t, img.image)})


@row("small-blob-get", title="1 KiB blob GET (wrk -c64)", unit="req/s", target=12.0, vs_off=0.9)
def row_small_blob_get(ctx: Context, t: Target) -> Measurement:
    img = _small(ctx, t)
    path = t.path(img.image, f"blobs/{img.layer_digest}")
    check_get(t, path, img.layer, image=img.image)
    return _wrk(ctx, t, t.base + path, auth_headers(t, img.image))


# --------------------------------------------------------------------------- skopeo images


def _image_push_once(ctx: Context, t: Target) -> tuple[float, float | None]:
    rep = ctx.seq()
    cfg = ctx.config
    prefixes = layer_prefixes(ctx.cache, cfg.image_layers, cfg.layer_size)
    layout = build_layout(
        ctx.workdir / "layouts" / f"{t.name}-{rep}", prefixes, f"{ctx.nonce}/{t.name}/{rep}"
    )
    ref = f"{t.ref}/bench/image{rep}:{layout.tag}"
    _settle_disk()
    cpu0 = ctx.server_cpu(t)
    seconds = skopeo_copy(f"oci:{layout.path}:{layout.tag}", f"docker://{ref}", creds=t.credentials)
    cpu = _cpu_delta(ctx, t, cpu0)
    ctx.of(t).setdefault("images", []).append(ref)
    ctx.of(t)["image_bytes"] = layout.total_bytes
    return seconds, cpu


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@row(
    "image-push",
    title="skopeo push, 4 gzipped layers",
    unit="s",
    higher_is_better=False,
    target=0.8,
)
def row_image_push(ctx: Context, t: Target) -> Measurement:
    log_in(t)
    runs = [_image_push_once(ctx, t) for _ in range(ctx.config.image_reps)]
    times = [r[0] for r in runs]
    return Measurement(
        statistics.median(times),
        {"runs_s": [round(x, 3) for x in times], "image_bytes": ctx.of(t)["image_bytes"]},
        work=len(runs),
        cpu_s=_sum([r[1] for r in runs]),
    )


@row(
    "image-pull",
    title="skopeo pull, 4 gzipped layers",
    unit="s",
    higher_is_better=False,
    target=0.9,
)
def row_image_pull(ctx: Context, t: Target) -> Measurement:
    refs: list[str] = ctx.of(t).get("images", [])
    if not refs:
        _image_push_once(ctx, t)
        refs = ctx.of(t)["images"]
    times = []
    cpus: list[float | None] = []
    log_in(t)
    for rep in range(ctx.config.image_reps):
        dest = ctx.workdir / "pulled" / f"{t.name}-{ctx.seq()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cpu0 = ctx.server_cpu(t)
        src = f"docker://{refs[rep % len(refs)]}"
        times.append(skopeo_copy(src, f"oci:{dest}:bench", creds=t.credentials))
        cpus.append(_cpu_delta(ctx, t, cpu0))
    return Measurement(
        statistics.median(times),
        {"runs_s": [round(x, 3) for x in times]},
        work=len(times),
        cpu_s=_sum(cpus),
    )
