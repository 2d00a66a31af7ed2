"""Signed session cookies and CSRF tokens for the web UI.

A session is `<user>|<expiry>` signed with HMAC-SHA256 under a key kept in the data folder
(`ui-session.key`, made once, shared by every worker of the node). Nothing is stored per
session: the user's roles are read again on every page, so a disabled user is out at once.
A form carries a CSRF token derived from the session (or, before login, from a random
pre-login cookie) and is refused without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

SESSION_COOKIE = "portway_ui"
LOGIN_COOKIE = "portway_ui_login"
SESSION_SECONDS = 8 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(data_dir: Path) -> bytes:
    """The node's session key, made on first use (O_EXCL: two workers agree on one)."""
    path = data_dir / "ui-session.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_bytes()
            if len(key) == 32:
                return key
            time.sleep(0.01)  # another worker is writing it
        raise RuntimeError(f"{path} is not a 32-byte key: remove it to make a new one") from None
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


class Sessions:
    def __init__(self, key: bytes, lifetime: int = SESSION_SECONDS) -> None:
        self.key = key
        self.lifetime = lifetime

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self.key, text.encode(), hashlib.sha256).digest())

    def issue(self, user: str, now: float | None = None) -> str:
        expiry = int((now if now is not None else time.time()) + self.lifetime)
        payload = _b64(f"{user}|{expiry}".encode())
        return f"{payload}.{self._sign('session:' + payload)}"

    def user_of(self, cookie: str | None, now: float | None = None) -> str | None:
        """The signed-in user of a session cookie; None if missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign("session:" + payload)):
            return None
        try:
            user, _, expiry = _unb64(payload).decode().rpartition("|")
            expires = int(expiry)
        except (ValueError, UnicodeDecodeError):
            return None
        if not user or expires < (now if now is not None else time.time()):
            return None
        return user

    def csrf(self, anchor: str) -> str:
        """The token a form must carry; `anchor` is the session cookie or the login nonce."""
        return self._sign("csrf:" + anchor)

    def csrf_ok(self, anchor: str | None, token: str | None) -> bool:
        return bool(anchor and token) and hmac.compare_digest(str(token), self.csrf(str(anchor)))


def login_nonce() -> str:
    return secrets.token_urlsafe(24)
