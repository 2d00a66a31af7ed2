"""Just enough TOML writing for test configuration files (tables, arrays of tables)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid TOML basic string for everything we write.
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key)


def _body(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]


def dumps(doc: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> str:
    """`{"server": {...}, "repository": [{...}, ...]}` → TOML text.

    Top-level mappings become `[table]`s, top-level lists of mappings `[[array]]`s; nested
    values are written inline. `None` values are left out.
    """
    lines: list[str] = []
    for name, section in doc.items():
        if isinstance(section, Mapping):
            lines += [f"[{_key(name)}]", *_body(section), ""]
        else:
            for item in section:
                lines += [f"[[{_key(name)}]]", *_body(item), ""]
    return "\n".join(lines)
