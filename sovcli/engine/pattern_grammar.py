"""A JSON Schema `pattern` (a regular expression) as a GBNF expression over the characters of
a JSON string *as written in JSON*: whatever the grammar admits is a valid JSON string body.

A pattern constrains the decoded string, so a `"` it allows is written `\\"`, a newline
`\\n`, a backslash `\\\\`; `.` and negated classes admit any character that needs no escape
(control characters, `"` and `\\` can only come as escapes). Supported: literals, `.`,
classes with ranges and `\\d \\w \\s \\D \\W \\S`, groups `( )` and `(?: )`, `|`, and the
quantifiers `* + ? {m} {m,} {m,n}` (lazy forms accepted as greedy). A pattern without `^`
or `$` matches anywhere (as JSON Schema says), so `.*` is added on that side. Lookarounds,
backreferences, word boundaries and anchors inside the pattern are refused (`ValueError`).
"""

from __future__ import annotations

import json

# One character of a JSON string body: unescaped (no control character, `"` or `\`) or escaped.
JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
# `.`: a character other than a line break.
JSON_DOT = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bft] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
)
_UNSAFE = frozenset(chr(c) for c in range(0x20)) | {'"', "\\", "\x7f"}
_CLASS_ESCAPES = {
    "d": [("0", "9")],
    "w": [("0", "9"), ("A", "Z"), ("a", "z"), ("_", "_")],
    "s": [(" ", " "), ("\t", "\t"), ("\n", "\n"), ("\r", "\r"), ("\f", "\f"), ("\v", "\v")],
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_QUANTIFIERS = "*+?"


def gbnf_literal(text: str) -> str:
    """`text` as a quoted GBNF literal (every byte it stands for is exactly `text`)."""
    out = []
    for ch in text:
        if ch in ('"', "\\", "[", "]"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _class_char(ch: str) -> str:
    """One character inside a GBNF `[...]` class."""
    if ch in ("]", "[", "\\", "^", "-", '"'):
        return "\\" + ch
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02X}"
    return ch


def _json_escaped(ch: str) -> str:
    """How a JSON string writes the character `ch` (as a GBNF literal)."""
    return gbnf_literal(json.dumps(ch)[1:-1])


def _safe_ranges(ranges: list[tuple[str, str]]) -> tuple[list[tuple[int, int]], set[str]]:
    """Split code-point ranges into those needing no escape and the characters that do."""
    safe: list[tuple[int, int]] = []
    unsafe: set[str] = set()
    for low, high in ranges:
        start = ord(low)
        for cp in range(ord(low), min(ord(high), 0x7F) + 1):
            if chr(cp) in _UNSAFE:
                if start < cp:
                    safe.append((start, cp - 1))
                unsafe.add(chr(cp))
                start = cp + 1
        if start <= ord(high):
            safe.append((start, ord(high)))
    return safe, unsafe


class PatternTranslator:
    """Translates one pattern; `rules` collects the named sub-rules it needs."""

    def __init__(self, pattern: str, rule_name: str) -> None:
        self.pattern = pattern
        self.rule_name = rule_name
        self.pos = 0
        self.rules: dict[str, str] = {}

    def translate(self) -> str:
        """The GBNF of a JSON string matching the pattern, quotes included."""
        body = self.pattern
        head = "" if body.startswith("^") else "json-dot* "
        body = body[1:] if body.startswith("^") else body
        anchored_end = body.endswith("$") and not body.endswith("\\$")
        tail = "" if anchored_end else " json-dot*"
        self.pattern = body[:-1] if anchored_end else body
        self.pos = 0
        expression = self._alternation()
        if self.pos != len(self.pattern):
            raise ValueError(f"unbalanced ')' at {self.pos} in the pattern")
        self.rules["json-dot"] = JSON_DOT
        return f'"\\"" {head}({expression}){tail} "\\"" space'

    # ---- recursive descent -------------------------------------------------------------
    def _alternation(self) -> str:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence())
        return " | ".join(b or '""' for b in branches)

    def _sequence(self) -> str:
        items: list[str] = []
        while self.pos < len(self.pattern) and self._peek() not in ("|", ")"):
            atom = self._atom()
            items.append(self._quantified(atom))
        return " ".join(items)

    def _atom(self) -> str:
        ch = self.pattern[self.pos]
        self.pos += 1
        if ch == "(":
            if self.pattern.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                raise ValueError("lookarounds and named groups are not supported in patterns")
            inner = self._alternation()
            if self._peek() != ")":
                raise ValueError("unbalanced '(' in the pattern")
            self.pos += 1
            return f"({inner})"
        if ch == "[":
            return self._char_class()
        if ch == ".":
            return "json-dot"
        if ch in ("^", "$"):
            raise ValueError("anchors are only supported at the start and end of a pattern")
        if ch in _QUANTIFIERS:
            raise ValueError(f"nothing to repeat before '{ch}' in the pattern")
        if ch == "\\":
            return self._escape()
        return _json_escaped(ch)

    def _escape(self) -> str:
        if self.pos >= len(self.pattern):
            raise ValueError("the pattern ends with a lone backslash")
        ch = self.pattern[self.pos]
        self.pos += 1
        if ch in "dws":
            return self._class_expr(_CLASS_ESCAPES[ch], negated=False)
        if ch in "DWS":
            return self._class_expr(_CLASS_ESCAPES[ch.lower()], negated=True)
        if ch in "bBAzZ123456789k":
            raise ValueError(f"'\\{ch}' is not supported in patterns")
        return _json_escaped(self._escaped_char(ch))

    def _escaped_char(self, ch: str) -> str:
        """The character a `\\x`-style escape stands for (after the backslash and `ch`)."""
        if ch in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[ch]
        if ch in "xu":
            width = 2 if ch == "x" else 4
            digits = self.pattern[self.pos : self.pos + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"bad '\\{ch}' escape in the pattern")
            self.pos += width
            return chr(int(digits, 16))
        if ch.isalnum():
            raise ValueError(f"'\\{ch}' is not supported in patterns")
        return ch

    def _char_class(self) -> str:
        negated = self._peek() == "^"
        self.pos += negated
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            if self.pos >= len(self.pattern):
                raise ValueError("unbalanced '[' in the pattern")
            ch = self.pattern[self.pos]
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            self.pos += 1
            if ch == "\\":
                if self.pos >= len(self.pattern):
                    raise ValueError("unbalanced '[' in the pattern")
                esc = self.pattern[self.pos]
                self.pos += 1
                if esc in "dws":
                    ranges.extend(_CLASS_ESCAPES[esc])
                    continue
                if esc in "DWS":
                    raise ValueError(f"'\\{esc}' inside a class is not supported in patterns")
                ch = self._escaped_char(esc)
            low = ch
            if (
                self._peek() == "-"
                and self.pos + 1 < len(self.pattern)
                and self.pattern[self.pos + 1] != "]"
            ):
                self.pos += 1
                high = self.pattern[self.pos]
                self.pos += 1
                if high == "\\":
                    if self.pos >= len(self.pattern):
                        raise ValueError("unbalanced '[' in the pattern")
                    self.pos += 1
                    high = self._escaped_char(self.pattern[self.pos - 1])
                if ord(high) < ord(low):
                    raise ValueError(f"bad range {low}-{high} in the pattern")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        return self._class_expr(ranges, negated)

    def _class_expr(self, ranges: list[tuple[str, str]], negated: bool) -> str:
        """A class as GBNF admitting only JSON-safe text: escapes for what needs one."""
        safe, unsafe = _safe_ranges(ranges)
        if negated:
            excluded = "".join(
                _class_char(chr(a)) if a == b else f"{_class_char(chr(a))}-{_class_char(chr(b))}"
                for a, b in safe
            )
            parts = [f'[^"\\\\\\x7F\\x00-\\x1F{excluded}]']
            parts += [_json_escaped(ch) for ch in ('"', "\\") if ch not in unsafe]
            return "(" + " | ".join(parts) + ")"
        parts = []
        if safe:
            members = "".join(
                _class_char(chr(a)) if a == b else f"{_class_char(chr(a))}-{_class_char(chr(b))}"
                for a, b in safe
            )
            parts.append(f"[{members}]")
        parts += [_json_escaped(ch) for ch in sorted(unsafe)]
        if not parts:
            raise ValueError("an empty class in the pattern")
        return "(" + " | ".join(parts) + ")"

    def _quantified(self, atom: str) -> str:
        ch = self._peek()
        if ch in _QUANTIFIERS and ch:
            self.pos += 1
            self._skip_lazy()
            return f"({atom}){ch}"
        if ch == "{":
            end = self.pattern.find("}", self.pos)
            spec = self.pattern[self.pos + 1 : end] if end != -1 else ""
            low, _, high = spec.partition(",")
            if (
                end == -1
                or not low.strip().isdigit()
                or (high.strip() and not high.strip().isdigit())
            ):
                return atom  # not a quantifier: `{` is then a literal (next atom)
            self.pos = end + 1
            self._skip_lazy()
            lo = int(low)
            if "," not in spec:
                return f"({atom}){{{lo}}}"
            if not high.strip():
                return f"({atom}){{{lo},}}"
            hi = int(high)
            if hi < lo:
                raise ValueError(f"bad quantifier {{{spec}}} in the pattern")
            return f"({atom}){{{lo},{hi}}}"
        return atom

    def _skip_lazy(self) -> None:
        if self._peek() in ("?", "+"):
            self.pos += 1

    def _peek(self) -> str:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else ""
