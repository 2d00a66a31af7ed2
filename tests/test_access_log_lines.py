"""The JSON access-log line is written out field by field (portway.observe.accesslog): it
must be exactly what `json.dumps` gives for the same fields, for any text a client sends."""

from __future__ import annotations

import io
import json
import logging

import pytest

from portway.observe.accesslog import LOGGER, AccessLog, Entry

CASES = [
    Entry(
        "a-1",
        "127.0.0.1",
        "admin",
        "hosted",
        "GET",
        "/v2/x/manifests/latest",
        "manifest",
        200,
        0,
        512,
        0.0012345,
        "docker/27.0",
    ),
    Entry("a-2", None, None, None, "PUT", '/v2/ü"\\x/\u2028y', "other", 404, 10, 0, 12.0, None),
    Entry(
        "a-3",
        "::1",
        "bob\n",
        "r",
        "HEAD",
        "/" + "p" * 600,
        "blob",
        500,
        1 << 40,
        3,
        0.0,
        'ag"ent\x00é\U0001f600',
    ),
]


@pytest.mark.parametrize("entry", CASES)
def test_json_line_is_what_json_dumps_writes(entry: Entry) -> None:
    logging.getLogger(LOGGER).setLevel(logging.INFO)
    out = io.StringIO()
    log = AccessLog("json", out)
    log.write(entry)
    log.flush()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    got = json.loads(text)
    path = entry.path if len(entry.path) <= 512 else entry.path[:512] + "..."
    want = {
        "ts": got["ts"],
        "request_id": entry.request_id,
        "client": entry.client,
        "principal": entry.principal,
        "repository": entry.repository,
        "method": entry.method,
        "path": path,
        "route": entry.route,
        "status": entry.status,
        "bytes_in": entry.bytes_in,
        "bytes_out": entry.bytes_out,
        "duration_ms": round(entry.seconds * 1000, 3),
        "user_agent": entry.user_agent,
    }
    assert text == json.dumps(want, separators=(",", ":")) + "\n"
    assert len(got["ts"]) == 24 and got["ts"].endswith("Z")  # 2026-12-02T06:30:00.123Z
