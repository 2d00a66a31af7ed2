"""Token signing keys in the metadata database, for a cluster (ADR 0022).

Every node of a cluster must sign with the same key and verify with the same set, so on
PostgreSQL the keys live in the `signing_keys` table (kid, algorithm, PKCS#8 PEM, created,
current) instead of `<data_dir>/keys`. `DatabaseKeyRing` is a `KeyRing` whose storage is that
table: the same `current`, `kids()`, `verification_key()`, `rotate()`, `remove()`, the same
`revision` for token caches. A change is noticed by one small query (a count, the newest key
and the current kid): in `reload_if_changed()`, or in a server (`watch=True`) by a thread of the
ring once a second, so the event loop never waits for it; a rotation or removal on one node
reaches every node within about a second.

The first node to start on an empty table brings its key folder along: the usable keys of
`<data_dir>/keys` (and its `current`) are imported, so tokens signed before the move keep
verifying; a node with no folder keys creates the first key. That runs under an advisory
lock, so nodes starting together agree on one set. Afterwards the folder is not read again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Connection, Engine, Row, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from portway.auth.keys import (
    CURRENT,
    KID_RE,
    Algorithm,
    KeyFolderError,
    KeyRing,
    SigningKey,
    _algorithm_of,
    _generate,
    thumbprint,
)
from portway.db.dialect import dialect_for
from portway.db.shared_schema import signing_keys as table

log = logging.getLogger("portway.auth")
WATCH_INTERVAL = 1.0  # seconds between looks for a rotation or removal by another node


def _pem(key: SigningKey) -> str:
    return key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _parse(kid: str, pem: str) -> SigningKey | None:
    try:
        private = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("not an EC or RSA key")
        if thumbprint(private.public_key()) != kid:
            raise ValueError("the kid does not match the key's thumbprint")
        return SigningKey(kid, _algorithm_of(private), private)
    except ValueError as exc:
        log.error("skipping signing key %s in the database: %s", kid, exc)
        return None


class DatabaseKeyRing(KeyRing):
    def __init__(
        self,
        engine: Engine,
        algorithm: Algorithm = "ES256",
        *,
        import_from: Path | None = None,
        reload_interval: float = 5.0,
        refresh_interval: float = 60.0,
        watch: bool = False,
    ) -> None:
        """`watch`: look for changes in a thread of its own once a second (a server: its event
        loop must not wait for the database) instead of in `reload_if_changed`."""
        super().__init__(
            import_from or Path("/nonexistent"),
            algorithm,
            reload_interval=reload_interval,
            refresh_interval=refresh_interval,
        )
        self.engine = engine
        self.import_from = import_from
        self._watch = watch
        self._watcher: threading.Thread | None = None

    def reload_if_changed(self) -> None:
        if not self._watch:
            super().reload_if_changed()
            return
        if self._watcher is None and self._loaded_at is not None:
            self._watcher = threading.Thread(
                target=self._watch_loop, name="portway-keys", daemon=True
            )
            self._watcher.start()

    def _watch_loop(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            if self._stamp() != self._folder_stamp:
                with contextlib.suppress(KeyFolderError):
                    self.load()

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> None:
        try:
            with self.engine.connect() as conn:
                rows = list(conn.execute(select(table)))
            if not rows:
                rows = self._first_keys()
        except SQLAlchemyError as exc:
            raise KeyFolderError(f"cannot read the signing keys from the database: {exc}") from None
        keys: dict[str, SigningKey] = {}
        current: str | None = None
        newest: tuple[float, str] = (-1.0, "")
        for row in rows:
            key = _parse(row.kid, row.pem)
            if key is None:
                continue
            keys[key.kid] = key
            newest = max(newest, (float(row.created), key.kid))
            if row.current:
                current = key.kid
        if not keys:
            raise KeyFolderError("no usable signing key in the database")
        if current not in keys:
            current = newest[1]
        if keys.keys() != self._keys.keys():
            self.revision += 1
        self._keys = keys
        self._current = current
        self._loaded_at = self._clock()
        self._folder_stamp = self._stamp()

    def _stamp(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(
                        func.count(),
                        func.max(table.c.created),
                        func.max(table.c.kid).filter(table.c.current == 1),
                    )
                ).one()
        except SQLAlchemyError:
            return None
        return hash(tuple(row))

    def _first_keys(self) -> list[Row[Any]]:
        """An empty table: this node's folder keys, or a new key; under a lock, once."""
        with self.engine.begin() as conn:
            dialect_for(conn).lock_keys(conn, ["portway:signing-keys"])
            rows = list(conn.execute(select(table)))
            if rows:
                return rows  # another node got there first
            imported = self._folder_keys()
            if imported:
                keys, current = imported
                log.info(
                    "signing keys: %d key(s) of %s moved into the database (current %s)",
                    len(keys), self.import_from, current,
                )  # fmt: skip
            else:
                key = self._new_key(self.algorithm)
                keys, current = [key], key.kid
            now = time.time()
            conn.execute(
                table.insert(),
                [
                    {"kid": k.kid, "algorithm": k.algorithm, "pem": _pem(k),
                     "created": now + i * 1e-3, "current": int(k.kid == current)}
                    for i, k in enumerate(keys)
                ],
            )  # fmt: skip
            return list(conn.execute(select(table)))

    def _folder_keys(self) -> tuple[list[SigningKey], str] | None:
        folder = self.import_from
        if folder is None or not folder.is_dir():
            return None
        keys = [k for p in sorted(folder.glob("*.pem")) if (k := self._read(p)) is not None]
        if not keys:
            return None
        try:
            named = (folder / CURRENT).read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = ""
        kids = {k.kid for k in keys}
        if named not in kids or not KID_RE.match(named):
            named = max(keys, key=lambda k: (folder / f"{k.kid}.pem").stat().st_mtime).kid
        return keys, named

    # -- changing --------------------------------------------------------------------------

    @staticmethod
    def _new_key(algorithm: Algorithm) -> SigningKey:
        private = _generate(algorithm)
        return SigningKey(thumbprint(private.public_key()), _algorithm_of(private), private)

    def _create(self, algorithm: Algorithm) -> SigningKey:
        key = self._new_key(algorithm)
        try:
            with self.engine.begin() as conn:
                self._insert_current(conn, key)
        except SQLAlchemyError as exc:
            raise KeyFolderError(f"cannot store a new signing key: {exc}") from None
        return key

    @staticmethod
    def _insert_current(conn: Connection, key: SigningKey) -> None:
        conn.execute(update(table).values(current=0))
        conn.execute(
            table.insert().values(
                kid=key.kid, algorithm=key.algorithm, pem=_pem(key), created=time.time(),
                current=1,
            )
        )  # fmt: skip

    def remove(self, kid: str) -> None:
        self._ensure_loaded()
        if kid == self._current:
            raise KeyFolderError("the current signing key cannot be removed; rotate first")
        if not KID_RE.match(kid) or kid not in self._keys:
            raise KeyFolderError(f"no signing key {kid!r}")
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(table).where(table.c.kid == kid, table.c.current == 0))
        except SQLAlchemyError as exc:
            raise KeyFolderError(f"cannot remove signing key {kid}: {exc}") from None
        del self._keys[kid]
        self.revision += 1
