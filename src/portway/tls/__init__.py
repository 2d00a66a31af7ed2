"""TLS for Portway: a local CA for trying things out, and SNI-aware server contexts."""

from portway.tls.context import build_ssl_context

__all__ = ["build_ssl_context"]
