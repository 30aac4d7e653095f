"""Routes of this API (filled in by its service)."""

from __future__ import annotations

from keycard.http.routing import Router


def register(router: Router) -> None:
    """No routes yet."""
