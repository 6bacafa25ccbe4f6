"""CLI: run chat (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from sovcli.errors import SovcliError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("run")
    def _run() -> None:
        """Not built yet."""
        raise SovcliError("'run' is not built yet")

    @app.command("chat")
    def _chat() -> None:
        """Not built yet."""
        raise SovcliError("'chat' is not built yet")
