"""Portway: a container repository manager."""

__version__ = "0.1.0"
