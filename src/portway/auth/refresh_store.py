"""Refresh tokens in the metadata database: recorded when issued, checked when used,
revoked with their user's password or account, purged once expired."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, delete, insert, select, update

from portway.auth.store_base import StoreBase, utc
from portway.db.auth_schema import refresh_tokens, users


class RefreshRecords(StoreBase):
    def record_refresh(self, jti: str, user: str, repository: str | None, expires_at: int) -> None:
        with self._write() as conn:
            conn.execute(
                insert(refresh_tokens).values(
                    jti=jti,
                    username=user,
                    repository=repository or "",
                    issued=self._now(),
                    expires=datetime.fromtimestamp(expires_at, UTC),
                    revoked=False,
                )
            )

    def refresh_valid(self, jti: str, user: str, repository: str | None) -> bool:
        """Recorded, not revoked, not expired, for this user and repository, user enabled."""
        with self._read() as conn:
            row = conn.execute(
                select(refresh_tokens.c.revoked, refresh_tokens.c.expires, users.c.disabled)
                .join(users, users.c.name == refresh_tokens.c.username)
                .where(
                    refresh_tokens.c.jti == jti,
                    refresh_tokens.c.username == user,
                    refresh_tokens.c.repository == (repository or ""),
                )
            ).first()
        if row is None or row.revoked or row.disabled:
            return False
        return utc(row.expires) > self._now()

    def revoke_refresh(self, jti: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(refresh_tokens).where(refresh_tokens.c.jti == jti).values(revoked=True)
            )

    def _revoke_user(self, conn: Connection, user: str) -> None:
        conn.execute(
            update(refresh_tokens).where(refresh_tokens.c.username == user).values(revoked=True)
        )

    def purge_refresh_tokens(self) -> int:
        """Forget expired refresh tokens; returns how many."""
        with self._write() as conn:
            done = conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.expires <= self._now())
            )
            return int(done.rowcount)
