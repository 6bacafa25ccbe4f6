"""The text of an .eml: subject, from, to and date, then the plain-text (or HTML) body.

The standard library's structured header parser (`email.policy.default`) is quadratic in
the number of defects it finds: a 50,000-character `To:` of dots or commas took minutes.
So the message is parsed with raw string headers (`compat32`), the four shown headers are
unfolded and their RFC 2047 encoded words decoded here in linear time, and the headers the
parser itself must read (Content-Type, Content-Disposition, Content-Transfer-Encoding) are
cut to `MAX_PARSED_HEADER` characters, which bounds the stdlib's own quadratic parameter
parsing. The body part is chosen here: the first text/plain part that is not an
attachment, else the first text/html one.
"""

from __future__ import annotations

import base64
import binascii
import email
import re
from email.message import Message
from email.policy import Compat32

from sovcli.batch import textcodec
from sovcli.batch.extract import (
    ExtractionError,
    decode_text,
    html_to_text,
    refuse_binary,
    short_reason,
)

SHOWN_HEADERS = ("Subject", "From", "To", "Date")
MAX_PARSED_HEADER = 4096
_PARSED_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})
# An RFC 2047 encoded word; character classes without '?' keep the match linear.
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t]+(?==\?)")


class _RawHeaders(Compat32):
    """compat32, but header values come back as raw strings, parsed ones cut short."""

    def header_fetch_parse(self, name: str, value: str) -> str:  # type: ignore[override]
        if name.lower() in _PARSED_HEADERS:
            return value[:MAX_PARSED_HEADER]
        return value


_POLICY = _RawHeaders()


def email_text(data: bytes, encoding: str | None = None) -> str:
    """The shown headers and the body text of an RFC 822 message; ExtractionError otherwise.

    `encoding` decodes a body that declares no charset (or one Python does not know).
    """
    refuse_binary(data)
    try:
        message = email.message_from_bytes(data, policy=_POLICY)
    except Exception as exc:
        raise ExtractionError(f"corrupt e-mail: {short_reason(exc)}") from exc
    headers = []
    for name in SHOWN_HEADERS:
        value = message.get(name)
        if value:
            shown = header_text(str(value))
            if shown:
                headers.append(f"{name}: {shown}")
    try:
        body_text = _body_text(message, encoding)
    except ExtractionError:
        raise
    except Exception as exc:  # RecursionError on absurd nesting, codec bugs, ...
        raise ExtractionError(f"corrupt e-mail body: {short_reason(exc)}") from exc
    if not body_text.strip() and not headers:
        raise ExtractionError("empty e-mail (no headers or body)")
    return "\n".join(headers) + "\n\n" + body_text


def header_text(raw: str) -> str:
    """A raw header value as text: unfolded, 8-bit bytes decoded, encoded words decoded."""
    raw = raw.replace("\r", "").replace("\n", "")
    data = raw.encode("utf-8", "surrogateescape")  # the parser keeps 8-bit bytes as surrogates
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode(textcodec.guess_legacy(data))
        except (textcodec.UndecidableEncoding, UnicodeDecodeError):
            text = data.decode("utf-8", errors="replace")
    text = _BETWEEN_WORDS.sub("", text)
    return _ENCODED_WORD.sub(_decode_word, text).strip()


def _decode_word(match: re.Match[str]) -> str:
    charset, kind, payload = match.groups()
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
    try:
        raw = payload.encode("ascii")
        if kind in "bB":
            decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4))
        else:
            decoded = binascii.a2b_qp(raw, header=True)
        return decoded.decode(charset, errors="replace")
    except (LookupError, ValueError, binascii.Error):
        return match.group(0)


def _body_part(message: Message) -> Message | None:
    plain = html = None
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = str(part.get("content-disposition") or "").split(";", 1)[0]
        if disposition.strip().lower() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and plain is None:
            plain = part
        elif content_type == "text/html" and html is None:
            html = part
    return plain if plain is not None else html


def _body_text(message: Message, encoding: str | None) -> str:
    part = _body_part(message)
    if part is None:
        return ""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload:
        return ""
    charset = part.get_content_charset()
    text = None
    if charset:
        try:
            text = payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            text = None
    if text is None:
        text = decode_text(payload, encoding)
    return html_to_text(text) if part.get_content_subtype() == "html" else text
