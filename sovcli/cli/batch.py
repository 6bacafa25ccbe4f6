"""CLI: batch (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from sovcli.errors import SovcliError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("batch")
    def _batch() -> None:
        """Not built yet."""
        raise SovcliError("'batch' is not built yet")
