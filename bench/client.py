"""Blob transfer client for the benchmark, run as its own process (`python bench/client.py`).

It reads one JSON command per line on stdin and answers one JSON line on stdout, so the
harness can keep it alive for the whole run (the base files are hashed once).

Blob `i` of a push is base file `i % n` followed by a 32-byte suffix unique to the push, so
every push uploads new content while the digest costs one `hash.copy()` per blob. Bodies go
out with `socket.sendfile` (zero copy) and responses are read into one reused buffer, so the
client stays far from being the bottleneck.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX_LEN = 32
READ_BUF = 1 << 20


@dataclass
class BaseFile:
    path: Path
    size: int
    state: Any  # hashlib sha256 state after the whole file

    def digest_with(self, suffix: bytes) -> str:
        h = self.state.copy()
        h.update(suffix)
        return "sha256:" + str(h.hexdigest())


class TransferError(Exception):
    pass


def _hash_file(path: Path) -> Any:
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h


class Client:
    def __init__(self, files: list[Path]) -> None:
        self.files = [BaseFile(p, p.stat().st_size, _hash_file(p)) for p in files]
        self.extra: dict[str, str] = {}  # sent with every request of a command (Authorization)

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _conn(host: str, port: int) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        conn.connect()
        return conn

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: dict[str, str],
        file: Path | None = None,
        offset: int = 0,
        count: int = 0,
        tail: bytes = b"",
    ) -> http.client.HTTPResponse:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {**self.extra, **headers}.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(count + len(tail)))
        conn.endheaders()
        sock = conn.sock
        assert sock is not None
        if count:
            assert file is not None
            with file.open("rb") as f:
                sent = sock.sendfile(f, offset, count)
            if sent != count:
                raise TransferError(f"sendfile sent {sent} of {count} bytes")
        if tail:
            sock.sendall(tail)
        return conn.getresponse()

    @staticmethod
    def _expect(resp: http.client.HTTPResponse, status: int, what: str) -> str:
        body = resp.read()
        if resp.status != status:
            raise TransferError(f"{what}: HTTP {resp.status} (expected {status}): {body[:300]!r}")
        return resp.getheader("Location") or ""

    @staticmethod
    def _next(base: str, current: str, location: str) -> str:
        """The path+query to use next, from a (maybe relative) Location."""
        url = urllib.parse.urljoin(base + current, location)
        parts = urllib.parse.urlsplit(url)
        if parts.netloc != urllib.parse.urlsplit(base).netloc:
            raise TransferError(f"upload moved to another host: {location}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    @staticmethod
    def _with_digest(path: str, digest: str) -> str:
        return path + ("&" if "?" in path else "?") + "digest=" + urllib.parse.quote(digest)

    # ------------------------------------------------------------------ one blob

    def _push_one(
        self,
        conn: http.client.HTTPConnection,
        base: str,
        api: str,
        image: str,
        bf: BaseFile,
        suffix: bytes,
        mode: str,
        chunk: int,
    ) -> str:
        digest = bf.digest_with(suffix)
        start = f"{api}{image}/blobs/uploads/"
        octet = {"Content-Type": "application/octet-stream"}
        if mode == "post-digest":
            # Single-request monolithic upload; a registry that answers 202 gets a PUT.
            resp = self._send(
                conn, "POST", self._with_digest(start, digest), octet, bf.path, 0, bf.size, suffix
            )
            if resp.status == 201:
                resp.read()
                return digest
            loc = self._expect(resp, 202, "POST ?digest=")
            path = self._next(base, start, loc)
            resp = self._send(
                conn, "PUT", self._with_digest(path, digest), octet, bf.path, 0, bf.size, suffix
            )
            self._expect(resp, 201, "PUT")
            return digest
        resp = self._send(conn, "POST", start, {})
        path = self._next(base, start, self._expect(resp, 202, "POST"))
        if mode == "monolithic":
            resp = self._send(
                conn, "PUT", self._with_digest(path, digest), octet, bf.path, 0, bf.size, suffix
            )
            self._expect(resp, 201, "PUT with body")
            return digest
        if mode != "chunked":
            raise TransferError(f"unknown push mode {mode!r}")
        total = bf.size + len(suffix)
        pos = 0
        while pos < total:
            end = min(pos + chunk, total)
            from_file = max(0, min(end, bf.size) - pos)
            tail = suffix[max(0, pos - bf.size) : end - bf.size] if end > bf.size else b""
            headers = {**octet, "Content-Range": f"{pos}-{end - 1}"}
            resp = self._send(conn, "PATCH", path, headers, bf.path, pos, from_file, tail)
            path = self._next(base, path, self._expect(resp, 202, f"PATCH {pos}-{end - 1}"))
            pos = end
        resp = self._send(conn, "PUT", self._with_digest(path, digest), {})
        self._expect(resp, 201, "closing PUT")
        return digest

    def _pull_one(
        self,
        conn: http.client.HTTPConnection,
        api: str,
        image: str,
        digest: str,
        buf: bytearray,
        verify: bool,
    ) -> int:
        conn.putrequest("GET", f"{api}{image}/blobs/{digest}", skip_accept_encoding=True)
        for k, v in self.extra.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        redirect = None
        if resp.status in (302, 303, 307) and resp.getheader("Location"):
            resp.read()
            redirect = urllib.parse.urlsplit(resp.getheader("Location", ""))
            # A presigned bucket URL: fetched without the registry's credentials.
            other = http.client.HTTPConnection(redirect.hostname or "", redirect.port or 80)
            other.putrequest(
                "GET", f"{redirect.path}?{redirect.query}", skip_accept_encoding=True
            )
            other.endheaders()
            resp = other.getresponse()
        if resp.status != 200:
            body = resp.read()
            raise TransferError(f"GET blob {digest}: HTTP {resp.status}: {body[:300]!r}")
        try:
            return self._read_body(resp, digest, buf, verify)
        finally:
            if redirect is not None:
                other.close()

    @staticmethod
    def _read_body(
        resp: http.client.HTTPResponse, digest: str, buf: bytearray, verify: bool
    ) -> int:
        h = hashlib.sha256() if verify else None
        view = memoryview(buf)
        got = 0
        while n := resp.readinto(buf):
            got += n
            if h is not None:
                h.update(view[:n])
        length = resp.getheader("Content-Length")
        if length is not None and int(length) != got:
            raise TransferError(f"GET blob {digest}: {got} bytes of {length}")
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise TransferError(f"GET blob {digest}: content does not match its digest")
        return got

    # ------------------------------------------------------------------ commands

    def _run_workers(
        self, host: str, port: int, jobs: list[Any], concurrency: int, work: Any
    ) -> tuple[float, list[Any]]:
        q: queue.Queue[tuple[int, Any]] = queue.Queue()
        for i, job in enumerate(jobs):
            q.put((i, job))
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException] = []
        conns = [self._conn(host, port) for _ in range(concurrency)]
        barrier = threading.Barrier(concurrency + 1)

        def worker(conn: http.client.HTTPConnection) -> None:
            barrier.wait()
            try:
                while True:
                    try:
                        i, job = q.get_nowait()
                    except queue.Empty:
                        return
                    results[i] = work(conn, job)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        for c in conns:
            c.close()
        if errors:
            raise errors[0]
        return elapsed, results

    def push(self, cmd: dict[str, Any]) -> dict[str, Any]:
        host, port, api, image = cmd["host"], cmd["port"], cmd["api"], cmd["image"]
        base = f"http://{host}:{port}"
        mode, chunk, tag = cmd["mode"], int(cmd.get("chunk", 8 << 20)), cmd["tag"]
        count = int(cmd["count"])
        jobs = []
        for i in range(count):
            suffix = f"{tag}/{i}".encode().ljust(SUFFIX_LEN, b".")[:SUFFIX_LEN]
            jobs.append((self.files[i % len(self.files)], suffix))

        def work(conn: http.client.HTTPConnection, job: tuple[BaseFile, bytes]) -> str:
            return self._push_one(conn, base, api, image, job[0], job[1], mode, chunk)

        elapsed, digests = self._run_workers(host, port, jobs, int(cmd["concurrency"]), work)
        total = sum(bf.size + len(sfx) for bf, sfx in jobs)
        return {"seconds": elapsed, "bytes": total, "digests": digests}

    def pull(self, cmd: dict[str, Any]) -> dict[str, Any]:
        host, port, api, image = cmd["host"], cmd["port"], cmd["api"], cmd["image"]
        digests: list[str] = cmd["digests"]
        verify = bool(cmd.get("verify", False))
        local = threading.local()

        def work(conn: http.client.HTTPConnection, digest: str) -> int:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = bytearray(READ_BUF)
            return self._pull_one(conn, api, image, digest, buf, verify)

        elapsed, sizes = self._run_workers(host, port, digests, int(cmd["concurrency"]), work)
        return {"seconds": elapsed, "bytes": sum(sizes)}


def main() -> int:
    files = [Path(p) for p in json.loads(sys.argv[1])]
    client = Client(files)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        client.extra = dict(cmd.get("headers") or {})
        try:
            if cmd["op"] == "push":
                result = client.push(cmd)
            elif cmd["op"] == "pull":
                result = client.pull(cmd)
            else:
                result = {"error": f"unknown op {cmd['op']!r}"}
        except (TransferError, OSError, http.client.HTTPException) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
