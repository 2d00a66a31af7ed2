"""Registry errors as data: each OCI / Docker error code with its HTTP status.

Handlers raise `RegistryError`; one middleware renders it as
`{"errors": [{"code", "message", "detail"}]}` with the registered status.
"""

from __future__ import annotations

from typing import Any

STATUS: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "RANGE_INVALID": 416,
    "PAGINATION_NUMBER_INVALID": 400,
    "MANIFEST_TOO_LARGE": 413,
    "UPSTREAM_UNAVAILABLE": 502,
    "UNAVAILABLE": 503,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
}

MESSAGES: dict[str, str] = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "BLOB_UPLOAD_INVALID": "blob upload invalid",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_BLOB_UNKNOWN": "manifest references a blob or manifest unknown to the repository",
    "MANIFEST_INVALID": "manifest invalid",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_INVALID": "invalid image name",
    "NAME_UNKNOWN": "repository or image name not known to registry",
    "SIZE_INVALID": "provided length did not match content length",
    "TAG_INVALID": "invalid tag",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "UNSUPPORTED": "the operation is unsupported",
    "TOOMANYREQUESTS": "too many requests",
    "RANGE_INVALID": "invalid content range",
    "PAGINATION_NUMBER_INVALID": "invalid number of results requested",
    "MANIFEST_TOO_LARGE": "manifest too large",
    "UPSTREAM_UNAVAILABLE": "the upstream registry could not be reached",
    "UNAVAILABLE": "service unavailable",
    "NOT_FOUND": "not found",
    "METHOD_NOT_ALLOWED": "method not allowed",
}


class RegistryError(Exception):
    """An error a client caused or must be told about; never a server bug."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        close_connection: bool = False,
    ) -> None:
        self.code = code
        # True when the rest of the request cannot be read (a stalled body): answer, then close
        self.close_connection = close_connection
        self.message = message or MESSAGES.get(code, code.lower())
        self.detail = detail
        self.status = status or STATUS.get(code, 400)
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
