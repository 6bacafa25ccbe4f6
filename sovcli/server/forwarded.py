"""Who sent a request: the peer address, or what a trusted proxy says the client was.

Forwarded-for headers (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`) are written by whoever
sends the request, so they are believed only when the peer is a proxy named with
`--trusted-proxy`; otherwise the peer address is the client, whatever the headers say.
Behind trusted proxies the chain is read from the right: each trusted hop vouches for the
address to its left, and the first address that is not a trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sovcli.server.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Origin:
    """The client a request is recorded under, and the proxy it came through (if any)."""

    client: str
    proxy: str | None = None


def _address(text: str) -> IPAddress | None:
    """An IP address from a header value (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `"..."`)."""
    value = text.strip().strip('"').strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The `for=` values of a `Forwarded` header (RFC 7239), first hop first."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, param = pair.partition("=")
            if name.strip().lower() == "for":
                hops.append(param)
    return hops


class ClientResolver:
    """Turns a request's peer and headers into its `Origin`."""

    def __init__(self, trusted: Iterable[IPNetwork] = ()) -> None:
        self.trusted = tuple(trusted)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def origin(self, peer: tuple[str, int] | None, headers: dict[str, str]) -> Origin:
        """The recorded origin of a request from `peer` carrying `headers` (lower-case)."""
        if peer is None:
            return Origin("-")
        peer_text = f"{peer[0]}:{peer[1]}"
        peer_address = _address(peer[0])
        if not self.trusted or peer_address is None or not self._is_trusted(peer_address):
            return Origin(peer_text)
        if "x-forwarded-for" in headers:
            hops = headers["x-forwarded-for"].split(",")
        elif "forwarded" in headers:
            hops = _forwarded_for(headers["forwarded"])
        elif "x-real-ip" in headers:
            hops = [headers["x-real-ip"]]
        else:
            return Origin(peer_text)
        client = peer_address
        for hop in reversed(hops):
            if not self._is_trusted(client):
                break
            address = _address(hop)
            if address is None:  # "unknown", an obfuscated id or junk: stop at the last proxy
                break
            client = address
        return Origin(str(client), proxy=peer_text)
