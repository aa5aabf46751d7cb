"""Queries behind the usage pages, the connection log and troubleshooting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from portal.models import Association, DicomIdentity, ListenerHeartbeat, Study, UsageDay, utcnow
from portal.usage_days import OPERATION_COUNTERS, request_counts

# A listener whose last heartbeat is older than this is shown as down.
HEARTBEAT_STALE_AFTER = timedelta(seconds=45)
UNRECOGNISED_WINDOW = timedelta(days=7)
# The panel lists the most recently seen unknown AE titles, up to this many.
UNRECOGNISED_LIMIT = 20


@dataclass
class UsageCounts:
    associations_accepted: int = 0
    associations_rejected: int = 0
    operations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATION_COUNTERS, 0))
    instances_received: int = 0
    bytes_received: int = 0
    studies: int = 0


def usage_periods(session: Session, identity: DicomIdentity, now: datetime | None = None) -> dict[str, UsageCounts]:
    """Count usage over the last 24 hours, 7 and 30 days, and all time.

    The last 24 hours come from the association rows themselves; longer periods
    add up whole UTC days of the daily counters, which survive pruning.
    """
    now = now or utcnow()
    periods = {"Last 24 hours": _last_day(session, identity, now)}
    for label, days in (("Last 7 days", 7), ("Last 30 days", 30), ("All time", None)):
        first_day = now.date() - timedelta(days=days - 1) if days else None
        periods[label] = _from_days(session, identity, first_day)
    return periods


def _last_day(session: Session, identity: DicomIdentity, now: datetime) -> UsageCounts:
    since = now - timedelta(hours=24)
    counts = UsageCounts()
    rows = session.execute(
        select(Association.outcome, Association.operations, Association.instances_received,
               Association.bytes_received)
        .where(Association.identity_id == identity.id, Association.started_at >= since)
    )
    for outcome, operations, instances, size in rows:
        if outcome == "rejected":
            counts.associations_rejected += 1
        else:
            counts.associations_accepted += 1
        for name, count in request_counts(operations).items():
            counts.operations[name] += count
        counts.instances_received += instances
        counts.bytes_received += size
    counts.studies = _studies_since(session, identity, since)
    return counts


def _from_days(session: Session, identity: DicomIdentity, first_day: date | None) -> UsageCounts:
    columns = ["associations_accepted", "associations_rejected", *OPERATION_COUNTERS.values(),
               "instances_received", "bytes_received"]
    query = select(*(func.coalesce(func.sum(getattr(UsageDay, name)), 0) for name in columns)).where(
        UsageDay.identity_id == identity.id
    )
    if first_day is not None:
        query = query.where(UsageDay.day >= first_day)
    totals = dict(zip(columns, session.execute(query).one()))

    since = datetime.combine(first_day, datetime.min.time(), timezone.utc) if first_day else None
    return UsageCounts(
        associations_accepted=totals["associations_accepted"],
        associations_rejected=totals["associations_rejected"],
        operations={name: totals[column] for name, column in OPERATION_COUNTERS.items()},
        instances_received=totals["instances_received"],
        bytes_received=totals["bytes_received"],
        studies=_studies_since(session, identity, since),
    )


def _studies_since(session: Session, identity: DicomIdentity, since: datetime | None) -> int:
    query = select(func.count()).select_from(Study).where(Study.identity_id == identity.id)
    if since is not None:
        query = query.where(Study.first_received_at >= since)
    return session.scalar(query)


@dataclass(frozen=True)
class DailyPoint:
    day: date
    associations: int
    instances: int


def daily_series(session: Session, identity: DicomIdentity, days: int = 30,
                 today: date | None = None) -> list[DailyPoint]:
    """Return one point per UTC day, oldest first, with zeros for days without usage."""
    today = today or utcnow().date()
    first_day = today - timedelta(days=days - 1)
    rows = session.execute(
        select(UsageDay.day, UsageDay.associations_accepted + UsageDay.associations_rejected,
               UsageDay.instances_received)
        .where(UsageDay.identity_id == identity.id, UsageDay.day >= first_day)
    )
    by_day = {day: (associations, instances) for day, associations, instances in rows}
    points = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        associations, instances = by_day.get(day, (0, 0))
        points.append(DailyPoint(day, associations, instances))
    return points


@dataclass(frozen=True)
class LogFilters:
    """Filters of the connection log, already validated."""

    identity_id: int | None = None
    outcome: str | None = None
    reason: str | None = None
    transport: str | None = None
    peer_address: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select) -> Select:
        if self.identity_id is not None:
            query = query.where(Association.identity_id == self.identity_id)
        if self.outcome:
            query = query.where(Association.outcome == self.outcome)
        if self.reason:
            query = query.where(Association.reason == self.reason)
        if self.transport:
            query = query.where(Association.transport == self.transport)
        if self.peer_address:
            query = query.where(Association.peer_address == self.peer_address)
        if self.since:
            query = query.where(Association.started_at >= self.since)
        if self.until:
            query = query.where(Association.started_at < self.until)
        return query


def log_page(session: Session, filters: LogFilters, before_id: int | None, size: int
             ) -> tuple[list[Association], int | None]:
    """Return one page of the log, newest first, and the id to continue below, if any.

    Keyset pagination on the primary key keeps every page as cheap as the first.
    """
    query = filters.apply(select(Association))
    if before_id is not None:
        query = query.where(Association.id < before_id)
    rows = session.scalars(query.order_by(Association.id.desc()).limit(size + 1)).all()
    next_before = rows[size - 1].id if len(rows) > size else None
    return rows[:size], next_before


@dataclass(frozen=True)
class Suggestion:
    identity: DicomIdentity
    similarity: str


@dataclass
class UnrecognisedDevice:
    calling_ae_title: str
    attempts: int
    last_attempt_at: datetime
    last_peer_address: str
    suggestions: list[Suggestion]


def unrecognised_devices(session: Session, now: datetime | None = None) -> list[UnrecognisedDevice]:
    """List calling AE titles rejected as unknown in the last 7 days, most recent first."""
    since = (now or utcnow()) - UNRECOGNISED_WINDOW
    rows = session.execute(
        select(Association.calling_ae_title, func.count(), func.max(Association.id))
        .where(Association.reason == "unknown_calling_ae", Association.started_at >= since,
               Association.calling_ae_title.is_not(None))
        .group_by(Association.calling_ae_title)
        .order_by(func.max(Association.id).desc())
        .limit(UNRECOGNISED_LIMIT)
    ).all()
    if not rows:
        return []

    latest = {row.id: row for row in session.scalars(select(Association).where(
        Association.id.in_([last_id for _, _, last_id in rows])))}
    registered = session.scalars(select(DicomIdentity)).all()
    devices = [
        UnrecognisedDevice(
            calling_ae_title=ae_title,
            attempts=attempts,
            last_attempt_at=latest[last_id].started_at,
            last_peer_address=latest[last_id].peer_address,
            suggestions=suggest_identities(ae_title, registered),
        )
        for ae_title, attempts, last_id in rows
    ]
    return sorted(devices, key=lambda device: device.last_attempt_at, reverse=True)


def suggest_identities(unknown: str, registered: list[DicomIdentity], limit: int = 3) -> list[Suggestion]:
    """Return the registered identities a device calling as `unknown` most likely meant."""
    ranked = []
    for identity in registered:
        match = _likely_meant(unknown, identity.ae_title)
        if match is not None:
            rank, similarity = match
            ranked.append((rank, identity.ae_title, Suggestion(identity, similarity)))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [suggestion for _, _, suggestion in ranked[:limit]]


def _likely_meant(unknown: str, candidate: str) -> tuple[int, str] | None:
    if unknown.upper() == candidate.upper():
        return 0, "differs only by case"
    if unknown.replace(" ", "") == candidate.replace(" ", ""):
        return 1, "differs only by spaces"
    if unknown.replace(" ", "").upper() == candidate.replace(" ", "").upper():
        return 1, "differs by case and spaces"
    distance = edit_distance(unknown.upper(), candidate.upper(), limit=2)
    if distance <= 2:
        return 1 + distance, f"{distance} character{'s' if distance > 1 else ''} different"
    return None


def edit_distance(first: str, second: str, limit: int | None = None) -> int:
    """Return the Levenshtein distance: insertions, deletions and substitutions.

    With `limit`, any distance above it is returned as `limit + 1`, which lets
    the unrecognised-devices panel compare against every identity quickly.
    """
    if limit is not None and abs(len(first) - len(second)) > limit:
        return limit + 1
    previous = list(range(len(second) + 1))
    for i, left in enumerate(first, start=1):
        current = [i]
        for j, right in enumerate(second, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (left != right)))
        if limit is not None and min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1] if limit is None else min(previous[-1], limit + 1)


@dataclass(frozen=True)
class ListenerStatus:
    heartbeat: ListenerHeartbeat
    up: bool


def listener_statuses(session: Session, now: datetime | None = None) -> list[ListenerStatus]:
    now = now or utcnow()
    heartbeats = session.scalars(
        select(ListenerHeartbeat).order_by(ListenerHeartbeat.node, ListenerHeartbeat.transport)
    ).all()
    return [
        ListenerStatus(beat, beat.state == "up" and now - beat.last_heartbeat_at <= HEARTBEAT_STALE_AFTER)
        for beat in heartbeats
    ]


@dataclass(frozen=True)
class RecentAddress:
    address: str
    associations: int
    last_seen_at: datetime


def recent_peer_addresses(session: Session, identity: DicomIdentity, days: int = 30,
                          now: datetime | None = None) -> list[RecentAddress]:
    """Return the addresses this identity's device connected from in the last `days` days, most used first."""
    since = (now or utcnow()) - timedelta(days=days)
    rows = session.execute(
        select(Association.peer_address, func.count(), func.max(Association.started_at))
        .where(Association.identity_id == identity.id, Association.started_at >= since)
        .group_by(Association.peer_address)
        .order_by(func.count().desc())
        .limit(20)
    )
    return [RecentAddress(address, count, last_seen) for address, count, last_seen in rows]


def last_association(session: Session, identity: DicomIdentity) -> Association | None:
    """Return the identity's most recent association attempt, for the transport details of "last seen"."""
    return session.scalar(
        select(Association).where(Association.identity_id == identity.id).order_by(Association.id.desc()).limit(1)
    )
