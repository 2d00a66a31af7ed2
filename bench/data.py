"""Benchmark data: random blob files and OCI image layouts with already-gzipped layers.

Random bytes are generated once into a cache folder (outside the repository by default) and
reused by later runs. Image layers are made unique per push without recompressing: a layer is
a cached gzip member holding a tar entry of random bytes, followed by a tiny gzip member holding
one small unique entry and the tar end-of-archive blocks (a multi-member gzip is one valid
stream, so the layer is a real `.tar.gz`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def default_cache_dir() -> Path:
    return Path(
        os.environ.get("PORTWAY_BENCH_CACHE", Path(tempfile.gettempdir()) / "portway-bench-cache")
    )


def _write_random(path: Path, size: int) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    tmp.rename(path)


def blob_files(cache: Path, count: int, size: int) -> list[Path]:
    """`count` files of `size` random bytes each (made once, then reused)."""
    folder = cache / "blobs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"random-{size}-{i}.bin"
        if not path.exists() or path.stat().st_size != size:
            _write_random(path, size)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- image layers


def _tar_entry(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    pad = (-len(data)) % tarfile.BLOCKSIZE
    return header + data + b"\0" * pad


@dataclass(frozen=True)
class LayerPrefix:
    gz: Path  # gzip member: one tar entry of random bytes, no end-of-archive
    tar_size: int  # uncompressed size of that member


def layer_prefixes(cache: Path, count: int, size: int) -> list[LayerPrefix]:
    folder = cache / "layers"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        gz = folder / f"layer-{size}-{i}.tar.gz-part"
        meta = gz.with_suffix(".json")
        if not gz.exists() or not meta.exists():
            tar = _tar_entry(f"bench/layer{i}.bin", os.urandom(size))
            tmp = gz.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(tar, compresslevel=1, mtime=0))
            tmp.rename(gz)
            meta.write_text(json.dumps({"tar_size": len(tar)}))
        out.append(LayerPrefix(gz, int(json.loads(meta.read_text())["tar_size"])))
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Layout:
    path: Path
    tag: str
    manifest_digest: str
    total_bytes: int


def _put_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return "sha256:" + hexd, len(data)


def build_layout(
    dest: Path, prefixes: list[LayerPrefix], unique: str, tag: str = "bench"
) -> Layout:
    """An OCI image layout at `dest` with one image of len(prefixes) unique gzipped layers."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = []
    diff_ids = []
    total = 0
    for i, prefix in enumerate(prefixes):
        tail_tar = _tar_entry(f"bench/id{i}", f"{unique}/{i}\n".encode()) + b"\0" * (
            2 * tarfile.BLOCKSIZE
        )
        tail_gz = gzip.compress(tail_tar, compresslevel=1, mtime=0)
        tmp = blobs / f".layer{i}.tmp"
        with tmp.open("wb") as out, prefix.gz.open("rb") as src:
            while chunk := src.read(4 * MiB):
                out.write(chunk)
            out.write(tail_gz)
        hexd = _sha256_file(tmp)
        size = tmp.stat().st_size
        tmp.rename(blobs / hexd)
        # diff_id: sha256 of the uncompressed tar (the gzip members decompressed in order).
        plain = hashlib.sha256()
        with gzip.open(blobs / hexd, "rb") as g:
            while chunk := g.read(4 * MiB):
                plain.update(chunk)
        diff_ids.append("sha256:" + plain.hexdigest())
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + hexd, "size": size})
        total += size
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"portway.bench": unique}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"portway bench layer {i}"} for i in range(len(prefixes))],
    }
    config_digest, config_size = _put_blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    manifest_digest, manifest_size = _put_blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return Layout(dest, tag, manifest_digest, total + config_size + manifest_size)


def small_image(unique: str, layer_size: int = 1024) -> tuple[bytes, bytes, bytes]:
    """(config, layer, manifest) bytes of a tiny OCI image with one `layer_size` blob."""
    layer = (unique.encode() + b"\n") * (layer_size // (len(unique) + 1) + 1)
    layer = layer[:layer_size]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()],
            },
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return config, layer, manifest
