"""CLI: `sovcli serve`, an OpenAI-compatible endpoint on this machine.

Starlette, uvicorn and llama.cpp are imported inside the command, never at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sovcli.cli.options import CtxOption, ThreadsOption

if TYPE_CHECKING:
    from sovcli.server.settings import ServedModel, ServerSettings

ModelsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Models to serve: alias, name:tag, hf:org/repo or a .gguf path.", show_default=False
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
    Path | None, typer.Option("--audit-log", help="Append one JSON line per request to this file.")
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
    models: ModelsArgument,
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
    quiet: QuietOption = False,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (many clients at once).

    Requests to the same model are decoded together (continuous batching over --parallel
    sequences); more wait in a bounded queue. Binds 127.0.0.1 unless told otherwise; any other
    address needs API keys (--api-key-file or SOVCLI_API_KEYS=id:key,...) or an explicit
    --no-auth. One log line per request on stderr, never with prompt or completion text.

    Example:

    \b
      sovcli serve smollm2-135m --port 8080 --parallel 8
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}'

    \b
    Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health,
    /metrics (Prometheus). Limits and the audit log: docs/serve.md.
    """
    from sovcli.server.auth import key_file_is_shared, load_api_keys
    from sovcli.server.gate import log_line as log
    from sovcli.server.runner import serve
    from sovcli.server.settings import Limits, ServerSettings

    keys = load_api_keys(api_key_file)
    if api_key_file is not None and key_file_is_shared(api_key_file):
        log(f"warning: {api_key_file} is readable by other users (chmod 600 it)")
    limits = Limits(max_body_bytes=max_body_kib * 1024, max_tokens=max_tokens, max_queue=queue,
                    header_timeout_s=header_timeout, max_connections=max_connections)  # fmt: skip
    settings = ServerSettings(
        models=_resolve_models(models), host=host, port=port, parallel=parallel, ctx=ctx,
        threads=threads, prompt_cache_mib=prompt_cache, api_keys=keys, no_auth=no_auth,
        audit_log=audit_log, audit_content=audit_content, audit_best_effort=audit_best_effort,
        trusted_proxies=tuple(trusted_proxies or ()), cors_origins=tuple(cors_origins or ()),
        limits=limits, log_requests=not quiet,
    )  # fmt: skip
    settings.validate()
    serve(settings, on_listening=functools.partial(_announce, settings))
    log("stopped")


def _announce(settings: ServerSettings, url: str) -> None:
    """The line printed once the server listens."""
    from sovcli.server.auth import ENV_VAR
    from sovcli.server.gate import log_line as log

    keys = settings.api_keys
    auth = f"{len(keys)} API key(s)" if keys else "no API key"
    names = ", ".join(m.ref for m in settings.models)
    log(f"serving {names} at {url}/v1 (parallel {settings.parallel}, {auth}); Ctrl-C stops")
    if not keys:
        log(f"  set {ENV_VAR} or --api-key-file to require keys")


def _resolve_models(refs: list[str]) -> tuple[ServedModel, ...]:
    """Each ref as a `ServedModel` (pulled first when not in the store)."""
    from sovcli.cli.progress import ensure_model
    from sovcli.errors import UsageError
    from sovcli.server.settings import ServedModel

    served: list[ServedModel] = []
    for ref in refs:
        installed = ensure_model(ref)
        path = installed.gguf_path
        if any(m.path == str(path) for m in served):
            raise UsageError(f"'{ref}' names a model already being served")
        aliases = []
        for name in (installed.ref, installed.name, path.stem, path.name):
            if name != ref and name not in aliases:
                aliases.append(name)
        served.append(ServedModel(ref=ref, path=str(path), aliases=tuple(aliases)))
    return tuple(served)


COMMANDS = {"serve": serve_command}
