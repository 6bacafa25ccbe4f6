"""`POST /api/pull` through sovcli's own pull, never Ollama's registry.

Only with `serve --allow-pull` (the handler refuses otherwise). A request may name a catalog
alias (`smollm2-135m[:Q8_0]`), a store name or a hub reference (`hf:org/repo[:QUANT]`);
never a path or a bundle on the server's disks. The pull goes through `sovcli.resolve.pull`,
so the catalog's pinned digests, verification, the offline switch and the site policy apply
exactly as for `sovcli pull`. The answer is one object (`{"status": "success", ...}`), which
Ollama clients read as a one-line stream too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sovcli.errors import SovcliError
from sovcli.server.errors import APIError, bad_request

MAX_REF_CHARS = 200


def pull_body(body: dict[str, Any]) -> str:
    """The model reference of a pull request (`model`, or the older `name`)."""
    from sovcli.store.names import parse_ref

    ref = body.get("model") or body.get("name")
    if not isinstance(ref, str) or not ref.strip() or len(ref) > MAX_REF_CHARS:
        raise bad_request("'model' must name a model, e.g. smollm2-135m", param="model")
    ref = ref.strip()
    try:
        kind = parse_ref(ref).kind
    except SovcliError as exc:
        raise bad_request(exc.message, param="model") from exc
    if kind not in ("alias", "hf", "name"):
        raise bad_request(
            "the server pulls catalog models and hub references only, not files or bundles",
            param="model",
        )
    return ref


async def run_pull(ref: str) -> dict[str, Any]:
    """Pull `ref` in a worker thread; the final status object, or an APIError."""
    from sovcli.resolve import pull

    try:
        result = await asyncio.to_thread(pull, ref)
    except SovcliError as exc:
        status = exc.http_status if 400 <= exc.http_status < 500 else 502
        raise APIError(status, f"cannot pull '{ref}': {exc.message}", code="pull_failed") from exc
    model = result.model
    return {
        "status": "success",
        "model": model.ref,
        "already_installed": result.already_installed,
    }
