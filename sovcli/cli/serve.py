"""CLI: `sovcli serve`, an OpenAI-compatible endpoint on this machine.

Starlette, uvicorn and llama.cpp are imported inside the command, never at module level.
"""

from __future__ import annotations

from pathlib import Path

import typer

SERVE_HELP = """Serve models over an OpenAI-compatible HTTP API (many clients at once).

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
/metrics (Prometheus).
"""


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("serve", help=SERVE_HELP)
    def _serve(
        models: list[str] = typer.Argument(
            ...,
            help="Models to serve: alias, name:tag, hf:org/repo or a .gguf path.",
            show_default=False,
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
        port: int = typer.Option(8080, "--port", "-p", help="TCP port (0: any free port)."),
        parallel: int = typer.Option(
            4, "--parallel", "-np", help="Sequences decoded together per model."
        ),
        ctx: int = typer.Option(
            None, "--ctx", help="Context per sequence, in tokens (default: min(model, 4096))."
        ),
        threads: int = typer.Option(None, "--threads", "-t", help="Decode threads."),
        prompt_cache: int = typer.Option(
            256,
            "--prompt-cache",
            metavar="MIB",
            help="RAM kept for KV states of earlier requests, so a repeated prompt is not "
            "processed again (0: off). Held in memory only, never written to disk.",
        ),
        api_key_file: Path = typer.Option(
            None, "--api-key-file", help="File of API keys, one 'id:secret' per line."
        ),
        no_auth: bool = typer.Option(
            False, "--no-auth", help="Allow a non-loopback --host without API keys."
        ),
        audit_log: Path = typer.Option(
            None, "--audit-log", help="Append one JSON line per request to this file."
        ),
        audit_content: bool = typer.Option(
            False, "--audit-content", help="Also write prompts and completions to the audit log."
        ),
        cors_origins: list[str] = typer.Option(
            [], "--cors-origin", help="Allow browser requests from this origin (repeatable)."
        ),
        max_tokens: int = typer.Option(
            4096, "--max-tokens", help="Largest max_tokens a request may ask (also the default)."
        ),
        max_body_kib: int = typer.Option(4096, "--max-body-kib", help="Largest request body."),
        queue: int = typer.Option(
            64, "--queue", help="Requests that may wait per model beyond --parallel (then 503)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-request log lines."),
    ) -> None:
        from sovcli.errors import UsageError
        from sovcli.server.auth import ENV_VAR, key_file_is_shared, load_api_keys
        from sovcli.server.gate import log_line as log
        from sovcli.server.runner import serve
        from sovcli.server.settings import Limits, ServerSettings

        if max_tokens < 1 or max_body_kib < 1 or queue < 0:
            raise UsageError("--max-tokens and --max-body-kib must be positive, --queue >= 0")
        keys = load_api_keys(api_key_file)
        if api_key_file is not None and key_file_is_shared(api_key_file):
            log(f"warning: {api_key_file} is readable by other users (chmod 600 it)")
        settings = ServerSettings(
            models=_resolve_models(models),
            host=host,
            port=port,
            parallel=parallel,
            ctx=ctx,
            threads=threads,
            prompt_cache_mib=prompt_cache,
            api_keys=keys,
            no_auth=no_auth,
            audit_log=audit_log,
            audit_content=audit_content,
            cors_origins=tuple(cors_origins),
            limits=Limits(
                max_body_bytes=max_body_kib * 1024, max_tokens=max_tokens, max_queue=queue
            ),
            log_requests=not quiet,
        )
        settings.validate()

        def on_listening(url: str) -> None:
            auth = f"{len(keys)} API key(s)" if keys else "no API key"
            names = ", ".join(m.ref for m in settings.models)
            log(f"serving {names} at {url}/v1 (parallel {parallel}, {auth}); Ctrl-C stops")
            if not keys:
                log(f"  set {ENV_VAR} or --api-key-file to require keys")

        serve(settings, on_listening=on_listening)
        log("stopped")


def _resolve_models(refs: list[str]):
    """Each ref as a `ServedModel` (pulled first when not in the store)."""
    from sovcli.errors import UsageError
    from sovcli.server.settings import ServedModel
    from sovcli.store import ensure_model

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
