"""`create_app(settings)`: the Starlette app of `sovcli serve`.

Routes: the OpenAI endpoints under /v1, the Ollama API under /api (server/ollama.py),
/health and /metrics. Middleware, outermost first: CORS (only when origins are given), the
Ollama shapes for /api/ paths (ollama_shape.py), then the request gate (API key, body cap,
log, metrics, audit). The models named at start load when the app starts (/health says
`loading` until they are ready); the registry loads others on demand and unloads idle ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sovcli.server.audit import AuditLog
from sovcli.server.auth import KeyChecker
from sovcli.server.errors import APIError
from sovcli.server.forwarded import ClientResolver
from sovcli.server.gate import RequestGate
from sovcli.server.handlers import Handlers, api_endpoint, error_response, openai_routes
from sovcli.server.logsafe import bounded
from sovcli.server.metrics import ServerMetrics
from sovcli.server.ollama import OllamaHandlers, ollama_routes
from sovcli.server.ollama_shape import OllamaShape
from sovcli.server.registry import EngineFactory, ModelRegistry
from sovcli.server.responses_api import ResponsesEndpoint
from sovcli.server.settings import ServerSettings, trusted_networks
from sovcli.server.state import ServerState


def create_app(
    settings: ServerSettings,
    *,
    engine_factory: EngineFactory | None = None,
    on_fatal: Callable[[Exception], None] | None = None,
) -> Starlette:
    """Build the app. `engine_factory` loads one model (default: `sovcli.engine.core.Engine`);
    `on_fatal` is called (from the loader thread) when a model cannot be loaded."""
    settings.validate()
    audit = (
        AuditLog(settings.audit_log, include_content=settings.audit_content)
        if settings.audit_log is not None
        else None
    )
    state = ServerState(
        settings=settings,
        registry=ModelRegistry(settings, engine_factory, on_fatal),
        metrics=ServerMetrics(),
        audit=audit,
    )
    handlers = Handlers(state)
    ollama = OllamaHandlers(state)
    routes = [
        *openai_routes(handlers, ResponsesEndpoint(handlers)),
        Route("/health", api_endpoint(handlers.health), methods=["GET"]),
        Route("/healthz", api_endpoint(handlers.health), methods=["GET"]),
        Route("/metrics", api_endpoint(handlers.metrics), methods=["GET"]),
        *ollama_routes(ollama),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.registry.start_loading()
        try:
            yield
        finally:
            handlers.close()
            ollama.close()
            await state.registry.aclose()
            if state.audit is not None:
                state.audit.close()

    middleware = []
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "X-Api-Key"],
                max_age=600,
            )
        )
    middleware.append(Middleware(OllamaShape))  # /api/*: Ollama's error and stream shapes
    middleware.append(
        Middleware(
            RequestGate,
            metrics=state.metrics,
            checker=KeyChecker(settings.api_keys) if settings.auth_enabled else None,
            max_body_bytes=settings.limits.max_body_bytes,
            body_timeout_s=settings.limits.body_timeout_s,
            max_header_bytes=settings.limits.max_header_bytes,
            audit=audit,
            audit_required=not settings.audit_best_effort,
            resolver=ClientResolver(trusted_networks(settings.trusted_proxies)),
            log_requests=settings.log_requests,
        )
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = bounded(request.url.path)
        if exc.status_code == 404:
            message = f"no such endpoint: {bounded(request.method, 16)} {path}"
        elif exc.status_code == 405:
            message = f"method {bounded(request.method, 16)} is not allowed on {path}"
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, message, headers=dict(exc.headers or {})))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.sovcli = state
    return app
