"""CLI: list show rm import verify (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from sovcli.errors import SovcliError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("list")
    def _list() -> None:
        """Not built yet."""
        raise SovcliError("'list' is not built yet")

    @app.command("show")
    def _show() -> None:
        """Not built yet."""
        raise SovcliError("'show' is not built yet")

    @app.command("rm")
    def _rm() -> None:
        """Not built yet."""
        raise SovcliError("'rm' is not built yet")

    @app.command("import")
    def _import() -> None:
        """Not built yet."""
        raise SovcliError("'import' is not built yet")

    @app.command("verify")
    def _verify() -> None:
        """Not built yet."""
        raise SovcliError("'verify' is not built yet")
