"""`sovcli serve`: an OpenAI-compatible HTTP server over the shared engine.

- `settings.py`: `ServerSettings` (plain data, validated)
- `app.py`: `create_app(settings)` (Starlette, no module globals)
- `runner.py`: `serve(settings)` binds the socket and runs uvicorn until SIGINT/SIGTERM
Starlette and uvicorn are imported only by `app.py` / `runner.py`.
"""

from sovcli.server.settings import ApiKey, Limits, ServedModel, ServerSettings

__all__ = ["ApiKey", "Limits", "ServedModel", "ServerSettings"]
