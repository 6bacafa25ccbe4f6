"""CLI: `sovcli ps` (what a running server holds) and `sovcli stop MODEL` (unload it)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption

UrlOption = Annotated[
    str,
    typer.Option("--url", help="The running `sovcli serve` (its /v1 or /api URL works too)."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="One of the server's API keys (default: SOVCLI_API_KEY; the variable keeps it "
        "out of the process list).",
        show_default=False,
    ),
]
StopModelArgument = Annotated[
    str, typer.Argument(help="The model to unload, as the server names it.", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8080"


def _key(api_key: str | None) -> str | None:
    from sovcli.settings import get

    return api_key or get("SOVCLI_API_KEY")


def ps_command(
    url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None, json_output: JsonOption = False
) -> None:
    """Show the models a running server holds: state, memory, slots busy/total, queue, and
    when an idle model will be unloaded.

    Example:

    \b
      sovcli ps
      sovcli ps --url http://10.0.0.5:8080 --json
    """
    from sovcli.cli.output import out_console, print_json
    from sovcli.server.control import loaded_models

    models = loaded_models(url, _key(api_key))
    if json_output:
        print_json({"models": models})
        return
    console = out_console()
    if not models:
        console.print("no model loaded (models load on their first request)", markup=False)
        return
    rows = [_row(m) for m in models]
    headers = ("NAME", "STATE", "SIZE", "SLOTS", "QUEUE", "CONTEXT", "UNTIL")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        console.print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(),
                      markup=False, soft_wrap=True)  # fmt: skip


def _row(model: dict[str, Any]) -> tuple[str, ...]:
    """One line of `ps` from an `/api/ps` entry (sovcli's detail when the server sends it)."""
    from sovcli.server.durations import format_duration
    from sovcli.server.footprint import format_size

    detail = model.get("sovcli") or {}
    busy, free = detail.get("slots_busy"), detail.get("slots_free")
    slots = f"{busy}/{busy + free}" if isinstance(busy, int) and isinstance(free, int) else "-"
    left = detail.get("expires_in_s")
    if detail.get("in_flight"):
        until = "busy"
    elif "expires_in_s" in detail and left is None:
        until = "forever"
    elif isinstance(left, (int, float)):
        until = "now" if left < 1 else f"in {format_duration(round(left))}"
    else:
        until = str(model.get("expires_at") or "-")
    size = model.get("size")
    return (
        str(model.get("name") or model.get("model") or "?"),
        str(detail.get("state", "ready")),
        format_size(size) if isinstance(size, int) else "-",
        slots,
        str(detail.get("queued", "-")),
        str(model.get("context_length") or "-"),
        until,
    )


def stop_command(
    model: StopModelArgument, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None
) -> None:
    """Unload a model from a running server (at once, or as soon as its requests finish).
    It is loaded again by its next request.

    Example:

    \b
      sovcli stop smollm2-135m
      SOVCLI_API_KEY=$KEY sovcli stop smollm2-135m --url http://10.0.0.5:8080
    """
    from sovcli.cli.output import log
    from sovcli.server.control import stop_model

    reply = stop_model(url, _key(api_key), model)
    name, status = reply.get("model", model), reply.get("status")
    if status == "unloading":
        log(f"{name} is busy: it unloads as soon as its requests finish")
    elif status == "not_loaded":
        log(f"{name} was not loaded")
    else:
        log(f"unloaded {name}")


COMMANDS = {"ps": ps_command, "stop": stop_command}
