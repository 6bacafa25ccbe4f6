"""Where sovcli keeps things. Every path is resolved at call time from the environment."""

from __future__ import annotations

from pathlib import Path

from sovcli import settings


def sovcli_home() -> Path:
    """The root of the model store: `$SOVCLI_HOME`, else the platform's user data dir."""
    env = settings.get("SOVCLI_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("sovcli", appauthor=False))


def models_dir() -> Path:
    """Installed models: `<home>/models/<name>/<tag>/`."""
    return sovcli_home() / "models"


def partial_dir() -> Path:
    """Downloads and conversions in progress (resumable, never registered)."""
    return sovcli_home() / "partial"


def locks_dir() -> Path:
    """Lock files that keep two processes from writing the same model."""
    return sovcli_home() / "locks"


def audit_dir() -> Path:
    """The audit trail: `$SOVCLI_AUDIT_DIR`, else `<home>/audit`."""
    env = settings.get("SOVCLI_AUDIT_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return sovcli_home() / "audit"


def user_catalog_path() -> Path:
    """The user's catalog: `$SOVCLI_CATALOG`, else `~/.config/sovcli/models.toml`."""
    env = settings.get("SOVCLI_CATALOG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("sovcli", appauthor=False)) / "models.toml"
