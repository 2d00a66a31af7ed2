"""The admin REST API: Nexus-compatible endpoints under /service/rest/v1, Portway's own under
/api/v1, and the OpenAPI document generated from both at /api/openapi.json (ADR 24)."""
