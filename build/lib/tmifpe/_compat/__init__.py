"""Compatibility shims for third-party packages (kept inside tmifpe, never installed top-level)."""
