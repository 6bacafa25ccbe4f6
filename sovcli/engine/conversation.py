"""Fitting a conversation into the context window by dropping its oldest turns; keeping the
last conversation of `sovcli run` for `run -c` (only when the user asks: `--save`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from sovcli import paths
from sovcli.engine.types import GenerationRequest
from sovcli.errors import ContextOverflowError, StoreError, UsageError


class _Renders(Protocol):
    info: Any

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str: ...
    def prompt_tokens(self, request: GenerationRequest) -> list[int]: ...


def fit_messages(
    engine: _Renders, messages: list[dict[str, Any]], reserve: int
) -> tuple[list[dict[str, Any]], str, int]:
    """Drop the oldest non-system messages until the prompt plus `reserve` tokens fits.

    Returns (kept messages, rendered prompt, number of messages dropped). The system message
    and the last message are always kept; if those alone do not fit, ContextOverflowError.
    """
    n_ctx = engine.info.n_ctx
    reserve = max(1, min(reserve, n_ctx // 2))
    kept = list(messages)
    dropped = 0
    while True:
        prompt = engine.render_chat(kept)
        n_tokens = len(engine.prompt_tokens(GenerationRequest(prompt)))
        if n_tokens + reserve <= n_ctx:
            return kept, prompt, dropped
        removable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        if not removable:
            raise ContextOverflowError(
                f"the message needs {n_tokens} tokens but the context holds {n_ctx}",
                hint="Send a shorter message, clear the conversation, or raise --ctx.",
            )
        first = removable[0]
        del kept[first]
        dropped += 1
        # Keep user/assistant pairs together: drop the assistant reply of a dropped user turn.
        if first < len(kept) - 1 and kept[first].get("role") == "assistant":
            del kept[first]
            dropped += 1


SAMPLE_CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello."},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]


def check_template(template: str, where: str = "the template") -> str:
    """`template` if it is a chat template (jinja) that renders a sample conversation, else
    UsageError: a created model's template is checked when it is created, not at first use."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from sovcli.engine import chat_template

    try:
        ImmutableSandboxedEnvironment().parse(template)
    except TemplateError as exc:
        raise UsageError(f"{where} is not a valid chat template: {exc}") from None
    rendered = chat_template.render(template, SAMPLE_CHAT, bos_token="<s>", eos_token="</s>")
    if "Name a colour." not in rendered:
        raise UsageError(f"{where} leaves the messages out of the prompt")
    return template


def use_template(engine: Any, template: str | None) -> None:
    """Make `engine` render chats with `template` (a created model's) instead of the GGUF's."""
    if template:
        engine.info = replace(engine.info, chat_template=template)


# ----------------------------------------------------------------------------- `run -c`

CONVERSATION_FORMAT = "sovcli-conversation/1"
LAST_CONVERSATION = "last.json"
MAX_CONVERSATION_BYTES = 64 * 1024 * 1024
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SavedConversation:
    """The conversation `run --save` kept: the model it was held with and its messages."""

    model: str
    messages: list[dict[str, str]]
    path: Path


def conversations_dir() -> Path:
    """Where saved conversations live: `<SOVCLI_HOME>/conversations/` (mode 0700)."""
    return paths.sovcli_home() / "conversations"


def save_conversation(model: str, messages: list[dict[str, Any]]) -> Path:
    """Keep `messages` as the last conversation (atomically, readable by the user only)."""
    from sovcli.fsutil import atomic_output

    folder = conversations_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise StoreError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    doc = {
        "format": CONVERSATION_FORMAT,
        "model": model,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "messages": [{"role": m["role"], "content": m.get("content") or ""} for m in messages],
    }
    data = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    target = folder / LAST_CONVERSATION
    with atomic_output(target) as (tmp, fh):  # mkstemp: created 0600
        os.chmod(tmp, 0o600)
        fh.write(data.encode("utf-8", errors="backslashreplace"))  # type: ignore[attr-defined]
    return target


def load_conversation() -> SavedConversation:
    """The last saved conversation; UsageError when there is none or it is not one."""
    from sovcli.engine.chat_session import check_text

    path = conversations_dir() / LAST_CONVERSATION
    hint = 'Save one first: sovcli run MODEL "..." --save (or set SOVCLI_SAVE_CONVERSATIONS=1).'
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONVERSATION_BYTES + 1)
    except FileNotFoundError:
        raise UsageError("there is no saved conversation to continue", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data) if len(data) <= MAX_CONVERSATION_BYTES else None
    except ValueError:
        doc = None
    messages = doc.get("messages") if isinstance(doc, dict) else None
    model = doc.get("model") if isinstance(doc, dict) else None
    if (
        not isinstance(messages, list)
        or not isinstance(model, str)
        or not all(_is_message(m) for m in messages)
    ):
        raise UsageError(
            f"{path} is not a saved conversation",
            hint="Remove it and " + hint[0].lower() + hint[1:],
        )
    for i, message in enumerate(messages, 1):
        check_text(message["content"], f"message {i} in {path}")
    return SavedConversation(model, [dict(m) for m in messages], path)


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in ROLES
        and isinstance(message.get("content"), str)
    )
