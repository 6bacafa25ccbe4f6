"""`sovcli.server.runner.serve` over the fake engine, as a process of its own.

For tests that need what only a separate process has (a file size limit, signals) without
loading the real model: `python fake_serve.py SETTINGS_JSON`, where the JSON holds
`ServerSettings` fields (`audit_log` a path, `limits` a dict). Prints the listening line on
stderr like `sovcli serve` does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from fake_engine import FakeEngineFactory
from serve_helpers import FAKE_REPLIES, fake_models, server_settings

from sovcli.server.gate import log_line
from sovcli.server.runner import serve
from sovcli.server.settings import Limits


def main(raw: str) -> None:
    """Serve the settings `raw` describes until SIGTERM."""
    fields = json.loads(raw)
    limits = Limits(**fields.pop("limits", {}))
    if fields.get("audit_log"):
        fields["audit_log"] = Path(fields["audit_log"])
    settings = replace(server_settings(limits=limits, **fields), models=fake_models("smollm2-fake"))
    factory = FakeEngineFactory(FAKE_REPLIES, n_embd=576)
    serve(
        settings,
        engine_factory=factory,
        on_listening=lambda url: log_line(f"serving fake at {url}/v1"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
