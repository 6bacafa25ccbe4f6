"""What one running app shares between its parts (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from sovcli.server.audit import AuditLog
from sovcli.server.metrics import ServerMetrics
from sovcli.server.registry import ModelRegistry
from sovcli.server.settings import ServerSettings


@dataclass
class ServerState:
    """Settings, models, metrics and the audit log of one app."""

    settings: ServerSettings
    registry: ModelRegistry
    metrics: ServerMetrics
    audit: AuditLog | None

    @property
    def audit_content(self) -> bool:
        """Whether prompts and completions go to the audit log."""
        return self.audit is not None and self.audit.include_content
