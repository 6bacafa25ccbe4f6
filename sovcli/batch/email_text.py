"""The text of an .eml: subject, from, to and date, then the plain-text (or HTML) body.

The standard library's structured header parser (`email.policy.default`) is quadratic in
the number of defects it finds: a 50,000-character `To:` of dots or commas took minutes.
So the message is parsed with raw string headers (`compat32`), the four shown headers are
unfolded and their RFC 2047 encoded words decoded here in linear time, and the headers the
parser itself must read (Content-Type, Content-Disposition, Content-Transfer-Encoding) are
cut to `MAX_PARSED_HEADER` characters, which bounds the stdlib's own quadratic parameter
parsing. The body part is chosen here: the first text/plain part that is not an
attachment and not blank, else the first such text/html one (an empty text/plain part of a
multipart/alternative no longer hides the HTML). Attachments follow the body, each under
"[Attachment: NAME]": its text when its type is one batch reads (PDF, DOCX, images by OCR,
a forwarded message ...), else its name, type and why it was not read. Forwarded messages
nest at most `MAX_DEPTH` deep; at most `MAX_ATTACHMENTS` attachments are read.
"""

from __future__ import annotations

import base64
import binascii
import email
import mimetypes
import re
from collections.abc import Iterator
from email.message import Message
from email.policy import Compat32

from sovcli.batch import textcodec
from sovcli.batch.extract import (
    SUPPORTED_SUFFIXES,
    ExtractionError,
    OcrOptions,
    decode_text,
    extract_bytes,
    html_to_text,
    refuse_binary,
    short_reason,
)

SHOWN_HEADERS = ("Subject", "From", "To", "Date")
MAX_DEPTH = 3  # a message attached to a message attached to a message
MAX_ATTACHMENTS = 50
MAX_NAME = 200
_BY_TYPE = {  # a suffix for attachments whose name has none that batch reads
    "text/plain": ".txt",
    "text/html": ".html",
    "text/csv": ".csv",
    "application/pdf": ".pdf",
    "message/rfc822": ".eml",
    "application/vnd.ms-outlook": ".msg",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tiff",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
}
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


def email_text(
    data: bytes, encoding: str | None = None, ocr: OcrOptions | None = None, depth: int = 0
) -> str:
    """The shown headers, body text and attachments of an RFC 822 message; ExtractionError
    otherwise.

    `encoding` decodes a body that declares no charset (or one Python does not know); `ocr`
    says how attached scans are read.
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
        body, attachments = _split(message)
        body_text = _body_text(body, encoding)
        attached = [
            attachment_text(name, payload, kind, encoding, ocr, depth)
            for name, payload, kind in _attachments(attachments)
        ]
    except ExtractionError:
        raise
    except Exception as exc:  # RecursionError on absurd nesting, codec bugs, ...
        raise ExtractionError(f"corrupt e-mail body: {short_reason(exc)}") from exc
    if not body_text.strip() and not headers and not attached:
        raise ExtractionError("empty e-mail (no headers or body)")
    return "\n\n".join(["\n".join(headers), body_text, *attached])


def attachment_text(
    name: str,
    payload: bytes,
    content_type: str,
    encoding: str | None,
    ocr: OcrOptions | None,
    depth: int,
) -> str:
    """An attachment as part of its message: "[Attachment: NAME]" and its text, or why not."""
    shown = safe_name(name) or "(no name)"
    suffix = _suffix(name, content_type)
    if suffix is None:
        return f"[Attachment: {shown} ({content_type}): not read, not a type batch reads]"
    if depth >= MAX_DEPTH and suffix in (".eml", ".msg"):
        return f"[Attachment: {shown}: not read, messages nested more than {MAX_DEPTH} deep]"
    try:
        if suffix == ".eml":
            text = email_text(payload, encoding, ocr, depth + 1)
        elif suffix == ".msg":
            from sovcli.batch.msg_text import msg_text

            text = msg_text(payload, encoding, ocr, depth + 1)
        else:
            result = extract_bytes(payload, suffix, encoding, ocr)
            text = result.text
            if result.ocr_pages:
                shown += f", OCR by {result.ocr_engine}"
    except ExtractionError as exc:
        return f"[Attachment: {shown}: not read: {exc}]"
    return f"[Attachment: {shown}]\n{text.strip()}"


def safe_name(name: str) -> str:
    """A file name as shown in the text: printable, at most MAX_NAME characters."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    return cleaned.strip()[:MAX_NAME]


def _suffix(name: str, content_type: str) -> str | None:
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot >= 0 else ""
    if suffix in SUPPORTED_SUFFIXES:
        return suffix
    return _BY_TYPE.get(content_type) or (
        guessed if (guessed := mimetypes.guess_extension(content_type)) in SUPPORTED_SUFFIXES
        else None
    )  # fmt: skip


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


def _split(message: Message) -> tuple[list[Message], list[Message]]:
    """The leaf parts of the message body, and its attachments (forwarded messages whole)."""
    body: list[Message] = []
    attachments: list[Message] = []
    for part in _leaves(message, 0):
        if part is not message and _is_attachment(part):
            attachments.append(part)
        else:
            body.append(part)
    return body, attachments


def _leaves(part: Message, depth: int) -> Iterator[Message]:
    """The non-multipart parts; a message/rfc822 part is a leaf (read as an attachment)."""
    if part.get_content_type() == "message/rfc822" and depth > 0:
        yield part
    elif part.is_multipart():
        if depth > 100:
            raise ExtractionError("corrupt e-mail: multipart nested more than 100 deep")
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _leaves(sub, depth + 1)
    else:
        yield part


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition") or "").split(";", 1)[0].strip().lower()
    if disposition == "attachment" or part.get_content_type() == "message/rfc822":
        return True
    return disposition != "inline" and bool(part.get_filename())


def _attachments(parts: list[Message]) -> Iterator[tuple[str, bytes, str]]:
    """(name, bytes, content type) of each attachment (a forwarded message as its bytes)."""
    for part in parts[:MAX_ATTACHMENTS]:
        name = header_text(str(part.get_filename() or ""))
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            payload = inner.as_bytes() if isinstance(inner, Message) else b""
            name = name or header_text(str(inner.get("subject") or "")) + ".eml"
        else:
            decoded = part.get_payload(decode=True)
            payload = decoded if isinstance(decoded, bytes) else b""
        yield name, payload, content_type
    if len(parts) > MAX_ATTACHMENTS:
        yield f"{len(parts) - MAX_ATTACHMENTS} more attachments", b"", "(not read)"


def _body_text(parts: list[Message], encoding: str | None) -> str:
    """The first non-blank text/plain part, else the first non-blank text/html one."""
    for wanted in ("plain", "html"):
        for part in parts:
            if part.get_content_type() != f"text/{wanted}":
                continue
            text = _part_text(part, encoding)
            if text.strip():
                return text
    return ""


def _part_text(part: Message, encoding: str | None) -> str:
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
