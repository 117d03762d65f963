"""tidings: a real-time event service for a web platform's projects, files and processes."""

from __future__ import annotations

__version__ = "0.1.0"

from tidings.app import create_app
from tidings.client import TidingsClient
from tidings.settings import Settings

__all__ = ["Settings", "TidingsClient", "__version__", "create_app"]
