"""tidings: a real-time event service for a web platform's projects, files and processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Settings", "TidingsClient", "__version__", "create_app"]

if TYPE_CHECKING:
    from tidings.app import create_app
    from tidings.client import TidingsClient
    from tidings.settings import Settings

# Imported on first use: the CLI and the client should not pay for the whole server.
_LAZY = {
    "create_app": "tidings.app",
    "TidingsClient": "tidings.client",
    "Settings": "tidings.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidings' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
