"""What `sovcli serve` is asked to do: models, address, limits, keys, logs. Plain data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.engine.types import MIN_CTX
from sovcli.errors import UsageError
from sovcli.settings import SPEC_MODES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class ServedModel:
    """One model to serve: the reference typed on the command line, its file, other names."""

    ref: str  # the id clients use first (what `sovcli serve REF` was given)
    path: str  # the GGUF file to load
    aliases: tuple[str, ...] = ()  # other accepted ids: `name:tag`, `name`, the file stem
    digest: str | None = None  # `sha256:<hex>` of the GGUF, as the store's manifest records it
    facts: dict[str, Any] | None = field(default=None, compare=False)  # manifest facts (ps/show)
    from_store: bool = False  # found in the store on demand (--all-installed), not named at start
    preset: Any = field(default=None, compare=False)  # a created model's Preset (defaults)


@dataclass(frozen=True)
class ApiKey:
    """An API key and the id that names it in logs (the secret itself is never shown)."""

    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Limits:
    """Caps that keep one client from exhausting the server."""

    max_body_bytes: int = 4 * 1024 * 1024  # request body (413 above)
    max_tokens: int = 4096  # per request (400 above); also the default when absent
    max_queue: int = 64  # requests waiting per model beyond `parallel` (503 above)
    max_embedding_inputs: int = 256  # texts per /v1/embeddings request
    retry_after_s: int = 1  # `Retry-After` sent with 503s
    header_timeout_s: float = 10.0  # from a request's first byte to its last header line
    body_timeout_s: float = 60.0  # to receive a whole request body (408 after)
    max_connections: int = 512  # open connections; beyond it idle ones are closed first
    max_header_bytes: int = 16 * 1024  # request line and headers (400 above)
    grammar_cache_bytes: int = 32 * 1024 * 1024  # grammars built from JSON schemas


@dataclass(frozen=True)
class ServerSettings:
    """Everything `create_app` and the runner need; built by the CLI or by tests."""

    models: tuple[ServedModel, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 4  # sequences decoded together per model
    ctx: int | None = None  # context per sequence (None: engine default)
    threads: int | None = None  # decode threads (None: engine default)
    prompt_cache_mib: int = 256  # RAM for KV states of earlier requests (0: off)
    api_keys: tuple[ApiKey, ...] = ()
    no_auth: bool = False  # explicit opt-out when binding a non-loopback address
    audit_log: Path | None = None
    audit_content: bool = False  # also write prompts and completions to the audit log
    audit_best_effort: bool = False  # serve on (unaudited) when the audit log cannot be written
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose forwarded-for headers are believed
    cors_origins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    shutdown_grace_s: float = 5.0  # how long in-flight requests may finish on SIGTERM
    log_requests: bool = True  # one stderr line per request
    keep_alive_s: float | None = 300.0  # idle time before a model is unloaded (None: never)
    max_loaded: int | None = None  # models loaded at once (None: no cap); LRU idle evicted
    memory_budget: int | None = None  # bytes for loaded models (estimated); LRU idle evicted
    all_installed: bool = False  # also serve, loaded on first request, any installed model
    allow_pull: bool = False  # POST /api/pull may pull through sovcli's own pull (and policy)
    # Speculative decoding (EngineConfig): "auto" | "off" | None (SOVCLI_SPEC, else auto); a
    # draft model (its GGUF) for the models named at start; most drafted tokens per step.
    speculative: str | None = None
    draft_model_path: str | None = None
    draft_max: int | None = None

    def validate(self) -> None:
        """Raise `UsageError` for settings that must not start (e.g. open bind without keys)."""
        if not self.models and not self.all_installed:
            raise UsageError(
                "no model to serve",
                hint="e.g. sovcli serve smollm2-135m, or --all-installed to serve every "
                "installed model on demand",
            )
        if self.max_loaded is not None and self.max_loaded < 1:
            raise UsageError("--max-loaded must be at least 1")
        if self.keep_alive_s is not None and self.keep_alive_s < 0:
            raise UsageError("--keep-alive must be 0 or more (or -1: never unload)")
        if self.allow_pull and not self.all_installed:
            raise UsageError(
                "--allow-pull needs --all-installed (a pulled model is served from the store)"
            )
        if self.parallel < 1:
            raise UsageError("--parallel must be at least 1")
        if self.ctx is not None and self.ctx < MIN_CTX:
            raise UsageError(f"--ctx must be at least {MIN_CTX} tokens")
        if self.prompt_cache_mib < 0:
            raise UsageError("--prompt-cache must be >= 0 MiB (0 turns it off)")
        self._validate_speculation()
        limits = self.limits
        if limits.header_timeout_s <= 0 or limits.body_timeout_s <= 0:
            raise UsageError("--header-timeout and the body timeout must be above 0 seconds")
        if limits.max_connections < 1:
            raise UsageError("--max-connections must be at least 1")
        trusted_networks(self.trusted_proxies)  # raises UsageError for a malformed CIDR
        if not 0 <= self.port <= 65535:
            raise UsageError(f"invalid port {self.port}", hint="Use a port between 1 and 65535.")
        if not is_loopback(self.host) and not self.api_keys and not self.no_auth:
            raise UsageError(
                f"binding {self.host} exposes the server to the network without an API key",
                hint="Give keys with --api-key-file FILE or SOVCLI_API_KEYS=id:key, "
                "or pass --no-auth if the network is trusted.",
            )
        ids: dict[str, str] = {}
        for model in self.models:
            for name in (model.ref, *model.aliases):
                if name in ids and ids[name] != model.path:
                    raise UsageError(
                        f"two served models answer to the name '{name}'",
                        hint="Serve each model once, under distinct names.",
                    )
                ids[name] = model.path

    def _validate_speculation(self) -> None:
        if self.speculative is not None and self.speculative not in SPEC_MODES:
            raise UsageError(
                f"unknown speculative mode {self.speculative!r}",
                hint=f"Use --spec {' or '.join(SPEC_MODES)}.",
            )
        if self.draft_max is not None and not 1 <= self.draft_max <= 32:
            raise UsageError("--draft-max must be between 1 and 32")
        if self.draft_model_path and self.speculative == "off":
            raise UsageError(
                "--draft needs speculative decoding, but --spec off turns it off",
                hint="Drop --draft, or use --spec auto.",
            )
        if self.draft_model_path and not self.models:
            raise UsageError(
                "--draft drafts for the models named on the command line, and none is",
                hint="Name the model it drafts for: sovcli serve MODEL --draft DRAFT_MODEL",
            )

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry one of the API keys."""
        return bool(self.api_keys)


def trusted_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The `--trusted-proxy` values as networks; `UsageError` names a malformed one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise UsageError(
                f"--trusted-proxy {cidr!r} is not an address or a CIDR block",
                hint="e.g. --trusted-proxy 10.0.0.5 or --trusted-proxy 10.0.0.0/24",
            ) from exc
    return tuple(networks)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
