"""Template globals and filters."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask
from flask_login import current_user

from portal.models import Permission
from portal.networks import peer_ip


def register(app: Flask) -> None:
    app.jinja_env.globals["Permission"] = Permission
    app.jinja_env.globals["can"] = _can
    app.jinja_env.filters["timestamp"] = format_timestamp
    app.jinja_env.filters["relative"] = format_relative
    app.jinja_env.filters["bytes"] = format_bytes
    app.jinja_env.filters["peer_network"] = peer_network


def _can(permission: Permission) -> bool:
    return current_user.is_authenticated and current_user.can(permission)


def format_timestamp(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_relative(value: datetime | None, now: datetime | None = None) -> str:
    """Return a short age such as '5 minutes ago'."""
    if value is None:
        return "never"
    seconds = int(((now or datetime.now(timezone.utc)) - value).total_seconds())
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def format_bytes(value: int | None) -> str:
    """Return a byte count in binary units, such as '12.3 MiB'."""
    size = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def peer_network(address: str) -> str | None:
    """Return a peer address as a single-address network, such as '10.1.4.23/32'."""
    ip = peer_ip(address)
    return f"{ip}/{ip.max_prefixlen}" if ip is not None else None
