"""A one-host Ceph cluster with the S3 gateway (Debian's Ceph 16: ceph-mon, ceph-osd, radosgw).

The S3 of record for the tests: one monitor (auth none), one OSD on `memstore` (objects in
RAM, nothing on disk), pools of size 1, and radosgw with the beast frontend, each on a free
loopback port, all under one temporary folder::

    rgw = CephRGW(tmp_path).start()   # about 11 s on an idle machine
    rgw.endpoint                      # "http://127.0.0.1:PORT"
    rgw.access_key, rgw.secret_key    # an S3 user made with radosgw-admin
    rgw.make_bucket("blobs")
    rgw.log()                         # the tail of every daemon's log
    rgw.stop()                        # SIGTERM each daemon by PID, SIGKILL after a grace period

Every daemon runs in the foreground under `ManagedProcess`, so a failed start names the
daemon and shows its log.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from .ports import free_ports
from .process import ManagedProcess, ProcessError, http_answers

START_TIMEOUT = 90.0  # per step; an idle machine needs ~11 s for all of them
DEVICE_BYTES = 4 * 1024**3  # what the memstore OSD reports: room, not a reservation


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(
            f"{binary} not found: install the Debian packages radosgw ceph-mon ceph-osd "
            "(scripts/install-test-deps.sh does)"
        )
    return path


class CephRGW:
    def __init__(self, root: Path) -> None:
        for binary in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool"):
            _need(binary)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.mon_port, self.rgw_port = free_ports(2)
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.region = "us-east-1"
        self.access_key = "PW" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.fsid = str(uuid.uuid4())
        self.conf = self.root / "ceph.conf"
        self.logs = self.root / "log"
        self._procs: list[ManagedProcess] = []

    # -- configuration -----------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = v1:127.0.0.1:{self.mon_port}
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = {r}/run
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
log file = {self.logs}/$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {self.logs}/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = {DEVICE_BYTES}
osd class update on start = false
osd crush update on start = false
osd crush chooseleaf type = 0

[mon]
mon data = {r}/mon/$cluster-$id

[osd]
osd data = {r}/osd/$cluster-$id

[client.rgw]
rgw data = {r}/rgw
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw enable usage log = false
rgw thread pool size = 64
"""
        )
        for sub in ("run", "log", "mon/ceph-a", "osd/ceph-0", "rgw"):
            (r / sub).mkdir(parents=True, exist_ok=True)

    def _run(self, argv: list[str], what: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ProcessError(
                f"Ceph: {what} failed ({' '.join(argv)}):\n{result.stdout[-2000:]}"
                f"{result.stderr[-2000:]}\n{self.log()}"
            )
        return result.stdout

    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        return self._run(
            ["ceph", "-c", str(self.conf), "--connect-timeout", "20", *args],
            f"ceph {' '.join(args)}",
            timeout,
        )

    def _daemon(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(argv, self.logs / f"{name}.out")
        proc.start()
        self._procs.append(proc)
        return proc

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> CephRGW:
        """Start every daemon; a failed start (a port another process took meanwhile, a
        daemon that died) is retried once on new ports before it fails with the logs."""
        first: ProcessError | None = None
        for attempt in (1, 2):
            try:
                self._start()
                return self
            except ProcessError as exc:
                self.stop()
                if attempt == 2:
                    raise ProcessError(f"{exc}\n(first attempt: {first})") from exc
                first = exc
                self._reset()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        """A clean folder and new ports for another attempt; the S3 user stays the same."""
        shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.mon_port, self.rgw_port = free_ports(2)
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.fsid = str(uuid.uuid4())

    def _start(self) -> None:
        self._write_conf()
        c = ["-c", str(self.conf)]
        monmap = self.root / "monmap"
        self._run(
            ["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
             f"[v1:127.0.0.1:{self.mon_port}]", str(monmap)],
            "monmaptool",
        )
        self._run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(monmap)], "mon mkfs")
        mon = self._daemon("mon.a", ["ceph-mon", *c, "-f", "-i", "a"])
        osd_uuid = str(uuid.uuid4())
        # One client process for the monitor commands (each `ceph` run costs ~1-3 s): it waits
        # for the quorum, registers the OSD and places it in the CRUSH map before it starts.
        osd_id = self._run(
            ["/usr/bin/python3", "-c", _REGISTER_OSD, str(self.conf), osd_uuid,
             str(START_TIMEOUT)],
            "OSD registration",
            timeout=START_TIMEOUT + 10,
        ).strip()
        if not mon.alive():
            raise ProcessError(f"ceph-mon exited at start:\n{self.log()}")
        self._run(
            ["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], "osd mkfs"
        )
        self._daemon(f"osd.{osd_id}", ["ceph-osd", *c, "-f", "-i", osd_id])
        rgw = self._daemon("client.rgw", ["radosgw", *c, "-f", "-n", "client.rgw"])
        # radosgw creates its pools once the OSD is up; it answers HTTP only after that
        rgw.wait_until(lambda: http_answers(self.endpoint), START_TIMEOUT, "S3 endpoint")
        self._run(
            ["radosgw-admin", *c, "-n", "client.rgw", "user", "create", "--uid", "portway",
             "--display-name", "Portway tests", "--access-key", self.access_key,
             "--secret", self.secret_key],
            "radosgw-admin user create",
        )

    def client(self) -> Any:
        """A plain (blocking) botocore S3 client for set-up and checks in tests."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def log(self, lines: int = 30) -> str:
        parts: list[str] = []
        if self.logs.exists():
            for path in sorted(self.logs.iterdir()):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.stop(timeout=10)
        self._procs.clear()


# Run by Debian's python3 (python3-rados comes with the Ceph packages, not in the venv).
_REGISTER_OSD = """
import json, sys, time, rados
conf, osd_uuid, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    cluster = rados.Rados(conffile=conf)
    try:
        cluster.connect(timeout=5)
        break
    except rados.Error as exc:
        if time.monotonic() > deadline:
            sys.exit(f"monitor not reachable: {exc}")
        time.sleep(0.2)
def command(**cmd):
    while True:  # a monitor still settling answers EAGAIN and the like: ask again
        try:
            ret, out, err = cluster.mon_command(json.dumps(cmd), b"", timeout=30)
        except rados.Error as exc:
            ret, out, err = -1, b"", str(exc)
        if ret == 0:
            return out
        if time.monotonic() > deadline:
            sys.exit(f"{cmd['prefix']}: {ret} {err}")
        time.sleep(0.2)
osd_id = json.loads(command(prefix="osd new", uuid=osd_uuid, format="json"))["osdid"]
command(prefix="osd crush add", id=osd_id, weight=1.0, args=["host=localhost", "root=default"])
print(osd_id)
"""
