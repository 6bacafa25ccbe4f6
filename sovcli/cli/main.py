"""The `sovcli` command: builds the Typer app and maps errors to messages and exit codes.

This is the only place where a `SovcliError` becomes output. Start-up stays fast: command
modules import llama.cpp, numpy and the hub client inside their functions, never at import.
"""

from __future__ import annotations

import difflib
import signal
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from sovcli import __version__
from sovcli.errors import SovcliError
from sovcli.settings import debug_enabled

INTERNAL_ERROR_EXIT = 70
INTERRUPTED_EXIT = 130  # 128 + SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so cleanup runs exactly as for Ctrl-C.

    A KeyboardInterrupt subclass: every `finally` and context manager (temp files beside
    convert/quantize outputs, journals, engines) unwinds as for Ctrl-C; code that turns Ctrl-C
    into "stop this reply" (the chat) re-raises it. The exit status is 128 + the signal
    number (143 for SIGTERM), the shell's convention for a process ended by that signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


TERMINATION_SIGNALS = ("SIGTERM", "SIGHUP")


def _raise_terminated(signum: int, _frame: Any) -> None:
    # One signal is enough: ignore repeats so they cannot interrupt the cleanup itself.
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM (systemd, docker, schedulers) and SIGHUP unwind like Ctrl-C.

    Only signals still at their default action are taken over: `nohup` (SIGHUP ignored) and
    a parent that set its own disposition keep theirs. Call from the main thread.
    """
    for name in TERMINATION_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_terminated)


def report_error(exc: SovcliError) -> None:
    """Print `error: <message>` and `hint: <hint>` on stderr."""
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")
    sys.stderr.flush()


def suggest_options(typed: str, known: list[str]) -> list[str]:
    """The real options closest to a mistyped one: prefixes first (--temp -> --temperature).

    click's own guess ranks by similarity alone, so `--temp` got "--help, --stop, --system".
    """
    longs = [name for name in known if name.startswith("--")]
    bare = typed.split("=", 1)[0]
    normal = bare.replace("_", "-").lower()
    prefixed = [name for name in longs if name.startswith(normal) and name != "--help"]
    if prefixed:
        return prefixed[:3]
    return difflib.get_close_matches(normal, [n for n in longs if n != "--help"], n=3, cutoff=0.6)


class SovcliCommand(TyperCommand):
    """A command whose unknown-option error names the closest real options."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from sovcli.cli.options import PAIR_METAVAR, join_pairs

        pair_flags = {
            opt
            for p in self.params
            if getattr(p, "metavar", None) == PAIR_METAVAR
            for opt in p.opts
        }
        try:
            return super().parse_args(ctx, join_pairs(args, pair_flags) if pair_flags else args)
        except Exception as exc:
            # click's NoSuchOption (a vendored copy in some typer versions): duck-typed.
            if type(exc).__name__ == "NoSuchOption" and hasattr(exc, "possibilities"):
                known = [opt for param in self.get_params(ctx) for opt in param.opts]
                known += [opt for param in self.get_params(ctx) for opt in param.secondary_opts]
                exc.possibilities = suggest_options(exc.option_name, known) or None
            raise


class _SovcliGroup(TyperGroup):
    """Turns SovcliError (and Ctrl-C) into a one-line message and an exit code."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """Find the command; then fail closed if the site policy cannot be read (inside
        `invoke`, so the PolicyError is reported like any other)."""
        name, command, rest = super().resolve_command(ctx, args)
        from sovcli.cli.policy import check_policy_readable

        check_policy_readable(name)
        return name, command, rest

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
        except Terminated as exc:
            sys.stderr.write(f"\nterminated ({signal.Signals(exc.signum).name})\n")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted\n")
            raise typer.Exit(INTERRUPTED_EXIT) from None
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


NO_ARGS_IS_HELP = frozenset({"batch", "batch-report"})
"""Commands that print their help when run without arguments (else: a usage error)."""


def _register_commands() -> None:
    """Every command, in the order `sovcli --help` lists them.

    Each command module holds module-level command functions and a `COMMANDS` table
    (command name -> function); the function's docstring is its help, with an example.
    """
    from sovcli.cli import (
        audit,
        batch,
        bench,
        convert,
        create,
        doctor,
        embed,
        evidence,
        models,
        policy,
        pull,
        run,
        serve,
        server_ctl,
        sign,
    )

    modules = (pull, models, create, run, embed, bench, doctor, convert, serve, server_ctl, batch)
    for module in (*modules, sign, policy, audit, evidence):
        for name, function in module.COMMANDS.items():
            app.command(name, cls=SovcliCommand, no_args_is_help=name in NO_ARGS_IS_HELP)(function)
        # Command groups (`sovcli audit verify`): a Typer app per group, same error mapping.
        for name, group in getattr(module, "GROUPS", {}).items():
            app.add_typer(group, name=name)


_register_commands()


def main() -> None:
    """Console-script entry point (SIGTERM/SIGHUP handlers installed first)."""
    install_signal_handlers()
    try:
        app()
    except Terminated as exc:  # a signal outside a command (while parsing, at start-up)
        sys.stderr.write("\nterminated\n")
        raise SystemExit(exc.exit_code) from None
