"""Audit log: JSON lines, never a secret."""

from __future__ import annotations

import io
import json
from pathlib import Path

from portway.auth.audit import REDACTED, AuditLog, scrub

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6IngifQ."
    "eyJzdWIiOiJhbGljZSJ9.MEUCIQDx1e9VYm3sWvW_5s4ZbO4T1XG2Ykb8u7zJ"
)


def test_lines_have_every_field(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "audit.log", clock=lambda: 1_700_000_000.5)
    log.write("login", principal="alice", client="192.0.2.1", outcome="failure")
    log.write(
        "push",
        principal="bob",
        client="::1",
        repository="team-a-hosted",
        detail={"image": "app", "tag": "1.0"},
    )
    lines = (tmp_path / "audit" / "audit.log").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "ts": "2023-11-14T22:13:20.500Z",
        "event": "login",
        "principal": "alice",
        "client": "192.0.2.1",
        "repository": None,
        "outcome": "failure",
        "detail": {},
    }
    assert second["repository"] == "team-a-hosted"
    assert second["detail"] == {"image": "app", "tag": "1.0"}


def test_no_secrets_ever_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    password = "hunter2-Secret!"
    log.write(
        "login",
        principal="alice",
        client="192.0.2.1",
        outcome="failure",
        detail={
            "password": password,
            "Password": password,
            "new_password": password,
            "token": JWT,
            "refresh_token": JWT,
            "access_token": JWT,
            "Authorization": "Basic YWxpY2U6aHVudGVyMg==",
            "client_secret": password,
            "nested": {"passwd": password, "list": [{"identitytoken": JWT}]},
            "note": f"client sent Bearer {JWT} and Basic YWxpY2U6aHVudGVyMg==",
            "raw": JWT,
        },
    )
    log.write("token.issue", principal=f"eve {JWT}", detail={"message": f"x {JWT} y"})
    text = path.read_text()
    assert password not in text
    assert "hunter2" not in text
    assert "YWxpY2U6aHVudGVyMg" not in text
    for part in JWT.split("."):
        assert part not in text
    record = json.loads(text.splitlines()[0])
    assert record["detail"]["password"] == REDACTED
    assert record["detail"]["nested"]["passwd"] == REDACTED
    assert record["detail"]["note"].startswith("client sent Bearer [redacted]")


def test_stream_target_and_odd_values() -> None:
    out = io.StringIO()
    log = AuditLog(out, clock=lambda: 0.0)
    record = log.write(
        "role.update", principal="admin", detail={"roles": frozenset({"b", "a"}), "n": 3}
    )
    assert json.loads(out.getvalue()) == record
    assert record["detail"] == {"roles": ["a", "b"], "n": 3}
    assert scrub({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}) == {
        "a": {"b": {"c": {"d": {"e": "[...]"}}}}
    }
    assert len(scrub("x" * 5000)) == 1024
    line = AuditLog(io.StringIO()).write("e\nvil", principal="a\nb")
    assert "\n" not in json.dumps(line)
