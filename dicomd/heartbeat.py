"""Listener heartbeats, so the portal can show which DICOM listeners are up."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from portal.models import ListenerHeartbeat, utcnow

log = logging.getLogger(__name__)

# Seconds between heartbeats; the portal shows a listener as down after
# about three missed ones.
HEARTBEAT_INTERVAL_SECONDS = 10


def product_version() -> str:
    try:
        return version("dicom-identities")
    except PackageNotFoundError:
        return "unknown"


class HeartbeatWriter:
    """Writes one heartbeat row per listener of this node."""

    def __init__(self, engine: Engine, node: str, listeners: list[tuple[str, int, str]]):
        self.engine = engine
        self.node = node
        self.listeners = listeners
        self.version = product_version()
        self.started_at = utcnow()

    def beat(self, state: str, detail: str | None = None) -> None:
        """Record `state` ("up" or "down") for every listener; a database error is logged, not raised."""
        try:
            self._write(state, detail)
        except SQLAlchemyError as error:
            log.warning("writing the listener heartbeat failed: %s", error)

    def _write(self, state: str, detail: str | None) -> None:
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            for host, port, transport in self.listeners:
                row = session.scalar(select(ListenerHeartbeat).where(
                    ListenerHeartbeat.node == self.node,
                    ListenerHeartbeat.transport == transport,
                    ListenerHeartbeat.port == port,
                ))
                if row is None:
                    row = ListenerHeartbeat(node=self.node, transport=transport, port=port)
                    try:
                        with session.begin_nested():
                            session.add(row)
                            self._fill(row, host, state, detail, now)
                    except IntegrityError:
                        # Another supervisor of the same node name wrote it first.
                        log.warning("another dicomd reports as node %r on port %d", self.node, port)
                    continue
                self._fill(row, host, state, detail, now)

    def _fill(self, row: ListenerHeartbeat, host: str, state: str, detail: str | None, now) -> None:
        row.host = host
        row.state = state
        row.detail = detail
        row.version = self.version
        row.pid = os.getpid()
        row.started_at = self.started_at
        row.last_heartbeat_at = now
