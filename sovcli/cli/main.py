"""The `sovcli` command: builds the Typer app and maps errors to messages and exit codes.

This is the only place where a `SovcliError` becomes output. Start-up stays fast: command
modules import llama.cpp, numpy and the hub client inside their functions, never at import.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from sovcli import __version__
from sovcli.errors import SovcliError
from sovcli.paths import debug_enabled

INTERNAL_ERROR_EXIT = 70


def report_error(exc: SovcliError) -> None:
    """Print `error: <message>` and `hint: <hint>` on stderr."""
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")
    sys.stderr.flush()


class _SovcliGroup(TyperGroup):
    """Turns SovcliError (and Ctrl-C) into a one-line message and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # help, usage errors and explicit exits: Typer reports them itself
        except SovcliError as exc:
            if debug_enabled():
                raise
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted\n")
            raise typer.Exit(130) from None
        except Exception as exc:
            if debug_enabled():
                raise
            sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc}\n")
            sys.stderr.write("hint: rerun with SOVCLI_DEBUG=1 for a traceback and report it.\n")
            raise typer.Exit(INTERNAL_ERROR_EXIT) from None


app = typer.Typer(
    cls=_SovcliGroup,
    name="sovcli",
    help="Pull, verify, convert, quantize and run open-weight LLMs on machines you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sovcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Pull, verify, convert, quantize and run open-weight LLMs on machines you own.

    Nothing leaves this machine: no telemetry, and no network call unless a command needs one.
    """


def _register_commands() -> None:
    from sovcli.cli import batch, bench, convert, doctor, models, pull, run, serve

    for module in (pull, models, run, bench, doctor, convert, serve, batch):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
