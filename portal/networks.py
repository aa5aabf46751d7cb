"""Allowed source networks of an identity: parsing, validation and matching."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NETWORKS = 64


class InvalidNetwork(ValueError):
    """An entry that is not a valid address or network; the message gives the fix."""


def parse_network(text: str) -> IPNetwork:
    """Parse an address (`10.1.4.23`, `fd00::1`) or a CIDR range (`10.1.4.0/24`)."""
    entry = text.strip()
    if not entry:
        raise InvalidNetwork("an entry is empty: give an address or a range such as 10.1.4.0/24")
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        pass

    try:
        loose = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise InvalidNetwork(
            f"{entry!r} is not an IP address or range: use a form such as 10.1.4.23, 10.1.4.0/24 or fd00::/64"
        ) from None
    raise InvalidNetwork(f"{entry!r} has host bits set: the range is {loose}")


def validate_networks(entries: Iterable[str]) -> tuple[list[str], dict[int, str]]:
    """Return the normalized entries and, per position, an error message for each bad one.

    Duplicates, including the same network written another way, are errors.
    """
    normalized: list[str] = []
    errors: dict[int, str] = {}
    seen: dict[IPNetwork, str] = {}
    for position, entry in enumerate(entries):
        try:
            network = parse_network(entry)
        except InvalidNetwork as error:
            errors[position] = str(error)
            continue
        if network in seen:
            errors[position] = f"{entry.strip()!r} repeats {seen[network]!r}"
            continue
        seen[network] = entry.strip()
        normalized.append(str(network))

    if len(normalized) > MAX_NETWORKS:
        errors[len(normalized)] = f"at most {MAX_NETWORKS} networks are allowed per identity"
    return normalized, errors


def split_entries(text: str) -> list[str]:
    """Split text with one entry per line or separated by commas; blank entries are dropped."""
    return [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]


def peer_ip(address: str) -> IPAddress | None:
    """Parse a peer address, mapping IPv4-mapped IPv6 (`::ffff:10.1.4.23`) to IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_allowed(address: str, networks: Iterable[str]) -> bool:
    """Return whether `address` lies in one of `networks`; no networks means any address."""
    networks = list(networks)
    if not networks:
        return True
    ip = peer_ip(address)
    if ip is None:
        return False
    return any(ip in ipaddress.ip_network(network) for network in networks)
