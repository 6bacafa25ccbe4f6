"""CLI: `sovcli serve`, an OpenAI-compatible endpoint on this machine.

Starlette, uvicorn and llama.cpp are imported inside the command, never at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sovcli.cli.options import (
    CtxOption,
    DraftMaxOption,
    DraftOption,
    SpecOption,
    ThreadsOption,
)
from sovcli.cli.speculation import SpecFlags

if TYPE_CHECKING:
    from sovcli.server.settings import ServedModel, ServerSettings

ModelsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Models to serve, loaded at start: alias, name:tag, hf:org/repo or a .gguf path "
        "(none: SOVCLI_DEFAULT_MODEL, or only --all-installed).",
        show_default=False,
    ),
]
KeepAliveOption = Annotated[
    str,
    typer.Option(
        "--keep-alive",
        metavar="DURATION",
        help="Unload a model idle this long (5m, 1h, 30s; 0: after each request; -1: never). "
        "Loaded again on its next request; Ollama requests may set their own keep_alive.",
    ),
]
MaxLoadedOption = Annotated[
    int | None,
    typer.Option(
        "--max-loaded",
        min=1,
        help="Models loaded at once; the least recently used idle one is unloaded to load another.",
    ),
]
MemoryBudgetOption = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="RAM for loaded models (e.g. 8G; estimated: file + KV cache + prompt cache); "
        "idle models are unloaded, least recently used first, to stay within it.",
    ),
]
AllInstalledOption = Annotated[
    bool,
    typer.Option(
        "--all-installed",
        help="Also serve every model in the store, loaded on its first request.",
    ),
]
AllowPullOption = Annotated[
    bool,
    typer.Option(
        "--allow-pull",
        help="Let POST /api/pull pull models (sovcli's pull and site policy; needs "
        "--all-installed).",
    ),
]
ParallelOption = Annotated[
    int, typer.Option("--parallel", "-np", help="Sequences decoded together per model.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No per-request log lines.")]
PromptCacheOption = Annotated[
    int,
    typer.Option(
        "--prompt-cache",
        metavar="MIB",
        help="RAM kept for KV states of earlier requests, so a repeated prompt is not "
        "processed again (0: off). Held in memory only, never written to disk.",
    ),
]
ApiKeyFileOption = Annotated[
    Path | None,
    typer.Option("--api-key-file", help="File of API keys, one 'id:secret' per line."),
]
NoAuthOption = Annotated[
    bool, typer.Option("--no-auth", help="Allow a non-loopback --host without API keys.")
]
AuditLogOption = Annotated[
    Path | None,
    typer.Option(
        "--audit-log",
        help="Write the per-request chain records here (default: the site's audit trail).",
    ),
]
AuditContentOption = Annotated[
    bool,
    typer.Option("--audit-content", help="Also write prompts and completions to the audit log."),
]
AuditBestEffortOption = Annotated[
    bool,
    typer.Option(
        "--audit-best-effort",
        help="Keep serving when the audit log cannot be written (default: refuse with 503).",
    ),
]
TrustedProxyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trusted-proxy",
        metavar="CIDR",
        help="Believe X-Forwarded-For / Forwarded / X-Real-IP from this proxy (repeatable).",
    ),
]
HeaderTimeoutOption = Annotated[
    float,
    typer.Option(
        "--header-timeout",
        min=0.1,
        metavar="SECONDS",
        help="Time a client has to send a request's headers (then 408 and closed).",
    ),
]
MaxConnectionsOption = Annotated[
    int,
    typer.Option(
        "--max-connections",
        min=1,
        help="Open connections at most (idle and slow ones are closed first).",
    ),
]
CorsOption = Annotated[
    list[str] | None,
    typer.Option("--cors-origin", help="Allow browser requests from this origin (repeatable)."),
]
MaxTokensOption = Annotated[
    int,
    typer.Option(
        "--max-tokens", min=1, help="Largest max_tokens a request may ask (also the default)."
    ),
]
MaxBodyOption = Annotated[
    int, typer.Option("--max-body-kib", min=1, help="Largest request body (KiB).")
]
QueueOption = Annotated[
    int,
    typer.Option(
        "--queue", min=0, help="Requests that may wait per model beyond --parallel (then 503)."
    ),
]


def serve_command(
    models: ModelsArgument = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port (0: any free port).")] = 8080,
    parallel: ParallelOption = 4,
    ctx: CtxOption = None,
    threads: ThreadsOption = None,
    prompt_cache: PromptCacheOption = 256,
    api_key_file: ApiKeyFileOption = None,
    no_auth: NoAuthOption = False,
    audit_log: AuditLogOption = None,
    audit_content: AuditContentOption = False,
    audit_best_effort: AuditBestEffortOption = False,
    trusted_proxies: TrustedProxyOption = None,
    cors_origins: CorsOption = None,
    max_tokens: MaxTokensOption = 4096,
    max_body_kib: MaxBodyOption = 4096,
    queue: QueueOption = 64,
    header_timeout: HeaderTimeoutOption = 10.0,
    max_connections: MaxConnectionsOption = 512,
    keep_alive: KeepAliveOption = "5m",
    max_loaded: MaxLoadedOption = None,
    memory_budget: MemoryBudgetOption = None,
    all_installed: AllInstalledOption = False,
    allow_pull: AllowPullOption = False,
    spec: SpecOption = None,
    draft: DraftOption = None,
    draft_max: DraftMaxOption = None,
    quiet: QuietOption = False,
) -> None:
    """Serve models over the OpenAI and Ollama HTTP APIs (many clients at once).

    Requests to the same model are decoded together (continuous batching over --parallel
    sequences); more wait in a bounded queue. Binds 127.0.0.1 unless told otherwise; any other
    address needs API keys (--api-key-file or SOVCLI_API_KEYS=id:key,...) or an explicit
    --no-auth. One log line per request on stderr, never with prompt or completion text.

    Example:

    \b
      sovcli serve smollm2-135m --port 8080 --parallel 8
      SOVCLI_REPRODUCIBLE=0 sovcli serve smollm2-135m --spec auto --draft-max 8
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}'

    \b
    Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, the Ollama
    API under /api (chat, generate, embed, tags, show, ps), /health, /metrics. Models load on
    first request and unload when idle (--keep-alive); `sovcli ps` / `sovcli stop` see and
    unload them. Limits and the audit log: docs/serve.md.
    """
    given = dict(locals())  # the options as given (the first statement: parameters only)
    from sovcli.server.gate import log_line as log
    from sovcli.server.runner import serve

    settings = _settings(given)
    serve(settings, on_listening=functools.partial(_announce, settings))
    log("stopped")


def _settings(given: dict[str, Any]) -> ServerSettings:
    """`ServerSettings` from serve's options (keys loaded, models resolved), validated."""
    from sovcli.governance.audit import serve_audit_log
    from sovcli.server.auth import key_file_is_shared, load_api_keys
    from sovcli.server.gate import log_line as log
    from sovcli.server.settings import Limits, ServerSettings

    g = SimpleNamespace(**given)
    speculation = SpecFlags(g.spec, g.draft, g.draft_max)  # --draft with --spec off: refused
    keys = load_api_keys(g.api_key_file)
    if g.api_key_file is not None and key_file_is_shared(g.api_key_file):
        log(f"warning: {g.api_key_file} is readable by other users (chmod 600 it)")
    limits = Limits(max_body_bytes=g.max_body_kib * 1024, max_tokens=g.max_tokens,
                    max_queue=g.queue, header_timeout_s=g.header_timeout,
                    max_connections=g.max_connections)  # fmt: skip
    settings = ServerSettings(
        models=_resolve_models(g.models or _default_models(g.all_installed)), host=g.host,
        port=g.port, parallel=g.parallel, ctx=g.ctx, threads=g.threads,
        prompt_cache_mib=g.prompt_cache, api_keys=keys, no_auth=g.no_auth,
        audit_log=serve_audit_log(g.audit_log), audit_content=g.audit_content,
        audit_best_effort=g.audit_best_effort, trusted_proxies=tuple(g.trusted_proxies or ()),
        cors_origins=tuple(g.cors_origins or ()), limits=limits, log_requests=not g.quiet,
        keep_alive_s=_keep_alive(g.keep_alive), max_loaded=g.max_loaded,
        memory_budget=_memory_budget(g.memory_budget), all_installed=g.all_installed,
        allow_pull=g.allow_pull, **_speculation(speculation),
    )  # fmt: skip
    settings.validate()
    return settings


def _speculation(flags: SpecFlags) -> dict[str, Any]:
    """`ServerSettings` fields of --spec, --draft (resolved under the policy) and --draft-max."""
    resolved = flags.resolve("serve")
    draft = resolved.draft
    return {
        "speculative": resolved.mode,
        "draft_model_path": str(draft.gguf_path) if draft is not None else None,
        "draft_max": resolved.draft_max,
    }


def _default_models(all_installed: bool) -> list[str]:
    """No model named: SOVCLI_DEFAULT_MODEL, unless --all-installed serves the store."""
    from sovcli.settings import get

    default = get("SOVCLI_DEFAULT_MODEL")
    return [default] if default and not all_installed else []


def _keep_alive(text: str) -> float | None:
    from sovcli.errors import UsageError
    from sovcli.server.durations import DurationError, parse_duration

    try:
        return parse_duration(text)
    except DurationError as exc:
        raise UsageError(f"--keep-alive {text!r} is not a duration", hint=f"Use {exc}.") from exc


def _memory_budget(text: str | None) -> int | None:
    from sovcli.errors import UsageError
    from sovcli.server.footprint import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise UsageError(
            f"--memory-budget {text!r} is not a size", hint="e.g. --memory-budget 8G or 512M"
        ) from None


def _announce(settings: ServerSettings, url: str) -> None:
    """The line printed once the server listens."""
    from sovcli.server.auth import ENV_VAR
    from sovcli.server.gate import log_line as log

    keys = settings.api_keys
    auth = f"{len(keys)} API key(s)" if keys else "no API key"
    from sovcli.server.durations import format_duration

    names = ", ".join(m.ref for m in settings.models)
    if settings.all_installed:
        names = f"{names} and " if names else ""
        names += "every installed model (loaded on demand)"
    keep = format_duration(settings.keep_alive_s)
    log(f"serving {names} at {url}/v1 and {url}/api (parallel {settings.parallel}, "
        f"keep-alive {keep}, {auth}); Ctrl-C stops")  # fmt: skip
    if not keys:
        log(f"  set {ENV_VAR} or --api-key-file to require keys")


def _resolve_models(refs: list[str]) -> tuple[ServedModel, ...]:
    """Each ref as a `ServedModel` (pulled first when not in the store)."""
    from sovcli.cli.progress import ensure_model
    from sovcli.errors import UsageError
    from sovcli.server.registry import served_model

    served: list[ServedModel] = []
    for ref in refs:
        installed = ensure_model(ref, action="serve")
        if any(m.path == str(installed.gguf_path) for m in served):
            raise UsageError(f"'{ref}' names a model already being served")
        served.append(served_model(installed, ref))  # its other names, digest, manifest facts
    return tuple(served)


COMMANDS = {"serve": serve_command}
