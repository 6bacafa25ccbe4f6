"""The text of an Outlook .msg: subject, from, to, date, body and attachments, like an .eml.

A .msg is an OLE2 compound file ([MS-OXMSG]): each MAPI property is a stream named
`__substg1.0_IIIITTTT` (property id, type), fixed-size ones (the dates) sit in the
`__properties_version1.0` stream, attachments in `__attach_version1.0_#N` storages, an
attached message in a `__substg1.0_3701000D` storage of its own. The compound file is read
with `olefile` (BSD licence); `extract-msg`, the usual Python reader, is GPL-3.0 and so is
not used (the install must stay permissive). Strings are UTF-16 (type 001F) or 8-bit in the
message's code page (001E). The body is PR_BODY, else PR_HTML as text; a body kept only as
compressed RTF is named, not read. Attachments are read as those of an .eml are.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from sovcli.batch.email_text import MAX_ATTACHMENTS, MAX_DEPTH, attachment_text, safe_name
from sovcli.batch.extract import ExtractionError, OcrOptions, html_to_text, short_reason

_SUBJECT, _SENDER_NAME, _SENDER_EMAIL, _SENDER_SMTP = 0x0037, 0x0C1A, 0x0C1F, 0x5D01
_DISPLAY_TO, _DISPLAY_CC = 0x0E04, 0x0E03
_BODY, _HTML, _RTF = 0x1000, 0x1013, 0x1009
_SUBMIT_TIME, _DELIVERY_TIME = 0x0039, 0x0E06
_INTERNET_CPID, _MESSAGE_CODEPAGE = 0x3FDE, 0x3FFD
_ATTACH_LONG_NAME, _ATTACH_NAME, _ATTACH_DISPLAY = 0x3707, 0x3704, 0x3001
_ATTACH_DATA, _ATTACH_MIME = 0x3701, 0x370E
_PT_UNICODE, _PT_STRING8, _PT_BINARY, _PT_LONG, _PT_SYSTIME, _PT_OBJECT = (
    0x001F, 0x001E, 0x0102, 0x0003, 0x0040, 0x000D,
)  # fmt: skip
MAX_STRING_BYTES = 64 * 1024 * 1024
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class _Message:
    """The properties of one message (the file's root, or an attached message's storage)."""

    def __init__(self, ole: Any, prefix: list[str], header: int) -> None:
        self.ole = ole
        self.prefix = prefix
        self.fixed = _fixed_properties(ole, [*prefix, "__properties_version1.0"], header)
        cpid = self.fixed.get(_INTERNET_CPID) or self.fixed.get(_MESSAGE_CODEPAGE)
        self.codec = _codec(cpid)

    def raw(self, prop: int, kind: int, where: list[str] | None = None) -> bytes | None:
        path = [*(where if where is not None else self.prefix), f"__substg1.0_{prop:04X}{kind:04X}"]
        if not self.ole.exists("/".join(path)):
            return None
        size = self.ole.get_size("/".join(path))
        if size > MAX_STRING_BYTES:
            raise ExtractionError(f"too large: a .msg property of {size} bytes")
        return bytes(self.ole.openstream(path).read())

    def string(self, prop: int, where: list[str] | None = None) -> str:
        """A string property (UTF-16 or 8-bit), '' when absent."""
        data = self.raw(prop, _PT_UNICODE, where)
        if data is not None:
            return data.decode("utf-16-le", "replace").rstrip("\x00")
        data = self.raw(prop, _PT_STRING8, where)
        if data is not None:
            return data.decode(self.codec, "replace").rstrip("\x00")
        return ""


def msg_text(
    data: bytes, encoding: str | None = None, ocr: OcrOptions | None = None, depth: int = 0
) -> str:
    """The headers, body and attachments of an Outlook .msg; ExtractionError otherwise."""
    try:
        import olefile
    except ImportError as exc:
        raise ExtractionError(
            "reading .msg needs the olefile package: pip install 'sovcli[msg]'"
        ) from exc
    if not data.startswith(_OLE_MAGIC):
        raise ExtractionError("corrupt .msg (not an OLE2 compound file)")
    try:
        ole = olefile.OleFileIO(data, raise_defects=olefile.DEFECT_INCORRECT)
    except Exception as exc:  # olefile raises OSError, struct.error, IndexError ...
        raise ExtractionError(f"corrupt .msg: {short_reason(exc)}") from exc
    try:
        return _message_text(_Message(ole, [], 32), encoding, ocr, depth)
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"corrupt .msg: {type(exc).__name__}: {short_reason(exc)}") from exc
    finally:
        ole.close()


def _message_text(msg: _Message, encoding: str | None, ocr: OcrOptions | None, depth: int) -> str:
    sender = msg.string(_SENDER_NAME)
    address = msg.string(_SENDER_SMTP) or msg.string(_SENDER_EMAIL)
    if address and address not in sender:
        sender = f"{sender} <{address}>".strip()
    when = msg.fixed.get(_SUBMIT_TIME) or msg.fixed.get(_DELIVERY_TIME)
    headers = [
        ("Subject", msg.string(_SUBJECT)),
        ("From", sender),
        ("To", msg.string(_DISPLAY_TO)),
        ("Cc", msg.string(_DISPLAY_CC)),
        ("Date", _filetime(when) if isinstance(when, int) else ""),
    ]
    shown = "\n".join(f"{name}: {value}" for name, value in headers if value.strip())
    attached = []
    for name, payload, kind, inner in _attachments(msg):
        if inner is None:
            attached.append(attachment_text(name, payload, kind, encoding, ocr, depth))
        elif depth + 1 >= MAX_DEPTH:
            shown = safe_name(name)
            attached.append(f"[Attachment: {shown}: not read, nested more than {MAX_DEPTH} deep]")
        else:
            text = _message_text(inner, encoding, ocr, depth + 1)
            attached.append(f"[Attachment: {safe_name(name) or '(message)'}]\n{text.strip()}")
    body = _body(msg)
    if not shown and not body.strip() and not attached:
        raise ExtractionError("empty .msg (no headers, body or attachments)")
    return "\n\n".join([shown, body, *attached])


def _body(msg: _Message) -> str:
    body = msg.string(_BODY)
    if body.strip():
        return body
    html = msg.raw(_HTML, _PT_BINARY)
    html_text = html.decode(msg.codec, "replace") if html is not None else msg.string(_HTML)
    if html_text.strip():
        return html_to_text(html_text)
    if msg.raw(_RTF, _PT_BINARY) is not None:
        return "(the body is kept only as compressed RTF: not read)"
    return ""


def _attachments(msg: _Message) -> list[tuple[str, bytes, str, _Message | None]]:
    """(name, bytes, content type, attached message or None) per attachment."""
    storages = sorted(
        {
            entry[len(msg.prefix)]
            for entry in msg.ole.listdir(streams=True, storages=True)
            if len(entry) > len(msg.prefix)
            and entry[: len(msg.prefix)] == msg.prefix
            and entry[len(msg.prefix)].startswith("__attach_version1.0_#")
        }
    )
    found: list[tuple[str, bytes, str, _Message | None]] = []
    for storage in storages[:MAX_ATTACHMENTS]:
        where = [*msg.prefix, storage]
        name = (
            msg.string(_ATTACH_LONG_NAME, where)
            or msg.string(_ATTACH_NAME, where)
            or msg.string(_ATTACH_DISPLAY, where)
        )
        mime = msg.string(_ATTACH_MIME, where).lower() or "application/octet-stream"
        payload = msg.raw(_ATTACH_DATA, _PT_BINARY, where)
        if payload is None and msg.ole.exists("/".join([*where, "__substg1.0_3701000D"])):
            inner = _Message(msg.ole, [*where, "__substg1.0_3701000D"], 24)
            found.append((name or inner.string(_SUBJECT), b"", "application/vnd.ms-outlook", inner))
            continue
        found.append((name, payload or b"", mime, None))
    if len(storages) > MAX_ATTACHMENTS:
        more = f"{len(storages) - MAX_ATTACHMENTS} more attachments"
        found.append((more, b"", "(not read)", None))
    return found


def _fixed_properties(ole: Any, path: list[str], header: int) -> dict[int, int]:
    """The 8-byte properties (times, code pages) of a __properties_version1.0 stream."""
    name = "/".join(path)
    if not ole.exists(name) or ole.get_size(name) > MAX_STRING_BYTES:
        return {}
    data = bytes(ole.openstream(path).read())
    found: dict[int, int] = {}
    for offset in range(header, len(data) - 15, 16):
        tag, _flags, value = struct.unpack_from("<IIQ", data, offset)
        kind, prop = tag & 0xFFFF, tag >> 16
        if kind == _PT_SYSTIME:
            found[prop] = value
        elif kind == _PT_LONG:
            found[prop] = value & 0xFFFFFFFF
    return found


def _codec(cpid: int | None) -> str:
    import codecs

    name = "utf-8" if cpid == 65001 else f"cp{cpid}" if cpid else "cp1252"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "cp1252"


def _filetime(value: int) -> str:
    """A FILETIME (100 ns since 1601) as an RFC 2822 style date in UTC."""
    try:
        when = datetime(1601, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=value // 10)
    except OverflowError:
        return ""
    return when.strftime("%a, %d %b %Y %H:%M:%S +0000")
