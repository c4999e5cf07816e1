"""GET /api/v1/openapi.json: the OpenAPI description of every route."""

from __future__ import annotations

from typing import Any

from bucket_app.settings import Settings


def register(app: Any, settings: Settings, service: Any) -> None:
    """Add this module's routes to the Faust app's web server (described in a later change)."""
