"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from portway.api.routing import Operation

REF = "#/components/schemas/{model}"


class ProblemDetails(BaseModel):
    """RFC 9457: every refusal of the admin API."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = None


_COMMON = {
    "400": "bad input",
    "401": "no or wrong credentials",
    "403": "not allowed for this user",
    "404": "not found",
}


_ETAGGED = ("/api/v1/repositories/", "/api/v1/connectors/", "/api/v1/hosts/")


def document(operations: list[Operation], version: str) -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ProblemDetails, "serialization")]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        for model, _many in op.responses.values():
            if model is not None:
                wanted.append((model, "serialization"))
    wanted = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(wanted, ref_template=REF)
    problem = {"application/problem+json": {"schema": refs[(ProblemDetails, "serialization")]}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        params += [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "description": p.description,
                "schema": dict(p.schema),
            }
            for p in op.query
        ]
        responses: dict[str, Any] = {}
        for status, (model, many) in op.responses.items():
            entry: dict[str, Any] = {"description": "success"}
            if model is not None:
                schema = refs[(model, "serialization")]
                if many:
                    schema = {"type": "array", "items": schema}
                entry["content"] = {"application/json": {"schema": schema}}
            responses[str(status)] = entry
        for code, text in _COMMON.items():
            responses.setdefault(code, {"description": text, "content": problem})
        if op.method in ("PUT", "DELETE") and op.path.startswith(_ETAGGED):
            responses["412"] = {"description": "If-Match does not match", "content": problem}
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": params,
            "responses": responses,
            "security": [] if op.tag == "meta" else [{"basic": []}],
        }
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        elif op.text_body:
            item["requestBody"] = {
                "required": True,
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        if op.privilege is not None:
            item["description"] = f"Needs the admin privilege `{op.privilege}`."
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portway admin API",
            "version": version,
            "description": "Nexus-compatible endpoints under /service/rest/v1 and Portway's "
            "own under /api/v1. HTTP Basic credentials; errors as RFC 9457 problem details.",
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
    }
