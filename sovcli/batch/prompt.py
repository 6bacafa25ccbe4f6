"""User prompt templates: `{text}`, `{name}` and `{path}` replaced, nothing else evaluated.

No str.format (attribute access such as `{text.__class__}` reaches Python objects) and no
jinja: the template is scanned for `{identifier}` and only the three variables are allowed.
`{{name}}` writes a literal `{name}`; other braces (JSON examples in a prompt) are left as is.
A template without `{text}` gets the document appended after a blank line.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sovcli.errors import UsageError

VARIABLES = ("text", "name", "path")
_FIELD = re.compile(r"\{\{(\w+)\}\}|\{(\w+)\}")

# The instruction used to combine per-chunk answers of one long document (map-reduce).
COMBINE_INTRO = (
    "The partial answers below each answer the same instruction for one consecutive part "
    'of the document "<name>". Combine them into one answer for the whole document, '
    "following the instruction."
)


@dataclass(frozen=True)
class PromptTemplate:
    """A checked template; `render` fills it, `sha256` identifies it in the results file."""

    source: str

    def __post_init__(self) -> None:
        for match in _FIELD.finditer(self.source):
            variable = match.group(2)
            if variable is not None and variable not in VARIABLES:
                raise UsageError(
                    f"unknown variable {{{variable}}} in the prompt",
                    hint="Use {text} (the document), {name} (file name), {path} (relative path);"
                    " write {{" + variable + "}} for a literal brace.",
                )
        if not self.source.strip():
            raise UsageError("the prompt is empty", hint='e.g. --prompt "Summarise: {text}"')

    @property
    def has_text(self) -> bool:
        """Whether the template places the document itself."""
        return any(m.group(2) == "text" for m in _FIELD.finditer(self.source))

    @property
    def sha256(self) -> str:
        """The template's identity (changing the prompt redoes every document)."""
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def render(self, *, text: str, name: str, path: str) -> str:
        """The prompt for one document (or chunk)."""
        values = {"text": text, "name": name, "path": path}

        def fill(match: re.Match[str]) -> str:
            if match.group(1) is not None:
                return "{" + match.group(1) + "}"
            return values[match.group(2)]

        rendered = _FIELD.sub(fill, self.source)
        if not self.has_text:
            rendered = rendered.rstrip() + "\n\n" + text
        return rendered

    def instruction(self, *, name: str, path: str) -> str:
        """The template with the document left out, for the combine step."""
        values = {"text": "", "name": name, "path": path}
        return _FIELD.sub(
            lambda m: "{" + m.group(1) + "}" if m.group(1) else values[m.group(2)], self.source
        ).strip()


def combine_prompt(user: PromptTemplate, *, name: str, path: str, parts: str) -> str:
    """The prompt that merges the partial answers of a long document into one answer."""
    instruction = user.instruction(name=name, path=path)
    return (
        COMBINE_INTRO.replace("<name>", name)
        + "\n\nInstruction:\n"
        + instruction
        + "\n\nPartial answers:\n"
        + parts
    )
