"""The web UI: server-rendered pages on the main listener at /ui/ (ADR 26)."""
