"""`--spec`, `--draft MODEL` and `--draft-max N` as the engine and the audit trail take them.

The flags themselves are declared once in `cli.options`; this module checks them together
and resolves the draft model through the store and the site policy, like the main model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sovcli.engine.reproducible import default_reproducible
from sovcli.engine.speculative import resolve_mode

if TYPE_CHECKING:
    from sovcli.store.model import InstalledModel


@dataclass(frozen=True)
class SpecFlags:
    """The speculative-decoding flags as typed (checked, nothing resolved yet)."""

    mode: str | None = None  # --spec: auto | always | off (None: SOVCLI_SPEC, else auto)
    draft: str | None = None  # --draft MODEL: a model ref
    draft_max: int | None = None  # --draft-max N (None: the engine's default)

    def __post_init__(self) -> None:
        # Refused here, before a draft model is pulled, by the rule the engine applies.
        resolve_mode(self.mode, reproducible=default_reproducible(), draft=self.draft is not None)

    def resolve(self, action: str, quiet: bool = False) -> Speculation:
        """The draft model from the store (pulled if needed), once the site policy allows
        `action` on it; PolicyDenied (exit 11) otherwise."""
        draft = None
        if self.draft is not None:
            from sovcli.cli.progress import ensure_model

            draft = ensure_model(self.draft, quiet=quiet, action=action)
        return Speculation(self.mode, draft, self.draft_max)


@dataclass(frozen=True)
class Speculation:
    """The resolved choice: what goes into EngineConfig and into the audit records."""

    mode: str | None = None
    draft: InstalledModel | None = None
    draft_max: int | None = None

    def engine_fields(self) -> dict[str, Any]:
        """Keyword arguments for `EngineConfig` (only those given)."""
        fields: dict[str, Any] = {"speculative": self.mode}
        if self.draft is not None:
            fields["draft_model_path"] = str(self.draft.gguf_path)
        if self.draft_max is not None:
            fields["draft_max"] = self.draft_max
        return fields

    def audit_fields(self) -> dict[str, Any]:
        """`draft_model` and its digest for an answer's audit record (none without a draft)."""
        if self.draft is None:
            return {}
        from sovcli.governance.audit import draft_model_fields

        return draft_model_fields(self.draft)


def effective_mode(mode: str | None) -> str:
    """The speculative mode in force: `mode`, else SOVCLI_SPEC, else auto."""
    from sovcli.settings import get

    return mode or get("SOVCLI_SPEC") or "auto"
