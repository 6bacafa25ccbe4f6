"""CLI: convert quantize (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from sovcli.errors import SovcliError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("convert")
    def _convert() -> None:
        """Not built yet."""
        raise SovcliError("'convert' is not built yet")

    @app.command("quantize")
    def _quantize() -> None:
        """Not built yet."""
        raise SovcliError("'quantize' is not built yet")
