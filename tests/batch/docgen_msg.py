"""Outlook .msg files for tests: a minimal OLE2 compound-file writer ([MS-CFB] version 3) and
the MAPI property streams of [MS-OXMSG]. No library writes .msg files; this one writes what
Outlook writes for a message with a plain or HTML body, recipients and attachments (files
or an attached message)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SECTOR = 512
MINI = 64
CUTOFF = 4096
FREE, END, FATSECT = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
NOSTREAM = 0xFFFFFFFF


@dataclass
class Node:
    """A storage (children) or a stream (data) of the compound file."""

    name: str
    data: bytes | None = None  # None: a storage
    children: list[Node] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.children.append(node)
        return node


def _chain(fat: list[int], start: int, count: int) -> None:
    for i in range(count):
        fat[start + i] = start + i + 1 if i < count - 1 else END


def write_cfb(root: Node) -> bytes:
    """The compound file holding `root`'s tree (root is the Root Entry)."""
    entries: list[Node] = []

    def collect(node: Node) -> None:
        entries.append(node)
        for child in node.children:
            collect(child)

    collect(root)
    index = {id(node): i for i, node in enumerate(entries)}
    # mini stream: the small streams, 64-byte aligned
    mini = bytearray()
    minifat: list[int] = []
    starts: dict[int, tuple[int, int]] = {}  # entry -> (start sector, size)
    big: list[Node] = []
    for node in entries[1:]:
        if node.data is None:
            continue
        if len(node.data) < CUTOFF:
            first = len(mini) // MINI
            count = max(1, -(-len(node.data) // MINI))
            mini += node.data.ljust(count * MINI, b"\0")
            minifat.extend(first + i + 1 if i < count - 1 else END for i in range(count))
            starts[index[id(node)]] = (first if node.data else END, len(node.data))
        else:
            big.append(node)
    dir_sectors = -(-len(entries) * 128 // SECTOR)
    minifat_sectors = -(-len(minifat) * 4 // SECTOR) if minifat else 0
    mini_sectors = -(-len(mini) // SECTOR)
    big_sectors = [-(-len(n.data or b"") // SECTOR) for n in big]
    body = dir_sectors + minifat_sectors + mini_sectors + sum(big_sectors)
    fat_sectors = 1
    while fat_sectors * 128 < body + fat_sectors:
        fat_sectors += 1
    assert fat_sectors <= 109
    total = fat_sectors + body
    fat = [FREE] * (fat_sectors * 128)
    for i in range(fat_sectors):
        fat[i] = FATSECT
    at = fat_sectors
    dir_start = at
    _chain(fat, at, dir_sectors)
    at += dir_sectors
    minifat_start = at if minifat_sectors else END
    _chain(fat, at, minifat_sectors)
    at += minifat_sectors
    mini_start = at if mini_sectors else END
    _chain(fat, at, mini_sectors)
    at += mini_sectors
    for node, count in zip(big, big_sectors, strict=True):
        starts[index[id(node)]] = (at, len(node.data or b""))
        _chain(fat, at, count)
        at += count
    assert at == total
    directory = bytearray()
    for i, node in enumerate(entries):
        directory += _entry(node, i, entries, index, starts, mini_start, len(mini))
    directory = directory.ljust(dir_sectors * SECTOR, b"\0")
    header = _header(fat_sectors, dir_start, minifat_start, minifat_sectors)
    out = bytearray(header)
    out += b"".join(struct.pack("<I", v) for v in fat)
    out += directory
    out += b"".join(struct.pack("<I", v) for v in minifat).ljust(minifat_sectors * SECTOR, b"\xff")
    out += bytes(mini).ljust(mini_sectors * SECTOR, b"\0")
    for node, count in zip(big, big_sectors, strict=True):
        out += (node.data or b"").ljust(count * SECTOR, b"\0")
    return bytes(out)


def _entry(node, i, entries, index, starts, mini_start, mini_size) -> bytes:  # type: ignore[no-untyped-def]
    name = node.name.encode("utf-16-le") + b"\0\0"
    assert len(name) <= 64
    kind = 5 if i == 0 else (1 if node.data is None else 2)
    child = right = NOSTREAM
    if node.children:
        child = index[id(node.children[0])]
    parent = next((p for p in entries if any(c is node for c in p.children)), None)
    if parent is not None:
        siblings = parent.children
        position = next(k for k, c in enumerate(siblings) if c is node)
        if position + 1 < len(siblings):
            right = index[id(siblings[position + 1])]
    if i == 0:
        start, size = (mini_start, mini_size)
    elif node.data is None:
        start, size = 0, 0
    else:
        start, size = starts[i]
    return (
        name.ljust(64, b"\0")
        + struct.pack("<HBB", len(name), kind, 1)
        + struct.pack("<III", NOSTREAM, right, child)
        + b"\0" * 16
        + struct.pack("<I", 0)
        + b"\0" * 16
        + struct.pack("<IQ", start, size)
    )


def _header(fat_sectors: int, dir_start: int, minifat_start: int, minifat_count: int) -> bytes:
    head = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 16
    head += struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\0" * 6
    head += struct.pack("<IIII", 0, fat_sectors, dir_start, 0)
    head += struct.pack("<IIIII", CUTOFF, minifat_start, minifat_count, END, 0)
    difat = [i for i in range(fat_sectors)] + [FREE] * (109 - fat_sectors)
    head += b"".join(struct.pack("<I", v) for v in difat)
    assert len(head) == SECTOR
    return head


# --- MAPI properties ---------------------------------------------------------------------


def _string(prop: int, text: str) -> Node:
    return Node(f"__substg1.0_{prop:04X}001F", text.encode("utf-16-le"))


def _binary(prop: int, data: bytes) -> Node:
    return Node(f"__substg1.0_{prop:04X}0102", data)


def _properties(header: int, fixed: dict[int, tuple[int, int]]) -> Node:
    """A __properties_version1.0 stream: `header` bytes, then (type, value) per property id."""
    data = b"\0" * header
    for prop, (kind, value) in fixed.items():
        data += struct.pack("<IIQ", (prop << 16) | kind, 6, value)
    return Node("__properties_version1.0", data)


def _filetime(year: int, month: int, day: int, hour: int = 9) -> int:
    from datetime import datetime, timezone

    when = datetime(year, month, day, hour, tzinfo=timezone.utc)
    delta = when - datetime(1601, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10_000_000


def _message_props(node: Node, msg: dict, header: int) -> None:  # type: ignore[type-arg]
    node.add(_properties(header, {0x0039: (0x0040, _filetime(2026, 3, 2)), 0x3FDE: (3, 65001)}))
    node.add(_string(0x001A, "IPM.Note"))
    node.add(_string(0x0037, msg["subject"]))
    node.add(_string(0x0C1A, msg["sender"]))
    node.add(_string(0x5D01, msg["email"]))
    node.add(_string(0x0E04, msg["to"]))
    if msg.get("body") is not None:
        node.add(_string(0x1000, msg["body"]))
    if msg.get("html") is not None:
        node.add(_binary(0x1013, msg["html"].encode("utf-8")))
    for n, (name, payload) in enumerate(msg.get("attachments", [])):
        attach = node.add(Node(f"__attach_version1.0_#{n:08X}"))
        method = 5 if isinstance(payload, dict) else 1  # ATTACH_EMBEDDED_MSG, ATTACH_BY_VALUE
        attach.add(_properties(8, {0x3705: (3, method)}))
        attach.add(_string(0x3707, name))
        if isinstance(payload, dict):  # an attached message
            inner = attach.add(Node("__substg1.0_3701000D"))
            _message_props(inner, payload, 24)
        else:
            attach.add(_binary(0x3701, payload))


def make_msg(
    subject: str,
    sender: str,
    email: str,
    to: str,
    body: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, bytes | dict]] | None = None,  # type: ignore[type-arg]
) -> bytes:
    """An Outlook .msg; an attachment whose payload is a dict of these arguments is a message."""
    root = Node("Root Entry")
    message = {
        "subject": subject, "sender": sender, "email": email, "to": to, "body": body,
        "html": html, "attachments": attachments or [],
    }  # fmt: skip
    _message_props(root, message, 32)
    names = root.add(Node("__nameid_version1.0"))  # named properties: none, but present
    for stream in ("00020102", "00030102", "00040102"):
        names.add(Node(f"__substg1.0_{stream}", b""))
    return write_cfb(root)
