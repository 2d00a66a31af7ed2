"""Helpers that start real servers and drive real clients for the test suite.

Every process started here runs in its own process group and is stopped by PID (never by
name), so a test session leaves nothing behind.
"""
