"""Daily usage counters per identity, added to by dicomd and read by the portal."""

from __future__ import annotations

import functools
from datetime import date

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from portal.database import dialect_name, upsert
from portal.models import UsageDay

COUNTERS = frozenset(
    column.name for column in UsageDay.__table__.columns if column.name not in ("id", "identity_id", "day")
)

# Operation names of portal.models.Operation mapped to their counter columns.
OPERATION_COUNTERS = {
    "echo": "echo_requests",
    "store": "store_requests",
    "find": "find_requests",
    "move": "move_requests",
    "get": "get_requests",
    "commit": "commit_requests",
}


def add_usage(connection: Session | Connection, identity_id: int, day: date, **increments: int) -> None:
    """Add `increments` to the identity's counters for `day`, creating the row if needed.

    One INSERT ... ON CONFLICT DO UPDATE adds in SQL, so concurrent writers
    from several processes never lose an update. The caller commits.
    """
    unknown = set(increments) - COUNTERS
    if unknown:
        raise ValueError(f"unknown usage counters: {', '.join(sorted(unknown))}")
    increments = {name: value for name, value in increments.items() if value}
    if not increments:
        return

    statement = add_usage_statement(dialect_name(connection), tuple(sorted(increments)))
    connection.execute(statement, {"identity_id": identity_id, "day": day, **increments})


@functools.cache
def add_usage_statement(dialect: str, counters: tuple[str, ...]):
    """Return the INSERT ... ON CONFLICT DO UPDATE that adds to `counters`, with parameters identity_id, day and each counter."""
    # Built once per dialect and set of counters: dicomd adds usage for every
    # instance, and building the statement costs more than running it.
    table = UsageDay.__table__
    insert = upsert(dialect, table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.identity_id, table.c.day],
        set_={name: table.c[name] + insert.excluded[name] for name in counters},
    )


# Keys of Association.operations that count something other than requests: a
# subset of requests already counted under another key, such as stores of an
# instance the PACS already had, or the failed C-STORE sub-operations of C-GET
# and C-MOVE requests.
SUBSET_KEYS = frozenset({"store_duplicate", "get_sub_operations_failed", "move_sub_operations_failed"})


def request_counts(operations: dict[str, int]) -> dict[str, int]:
    """Count DIMSE requests per operation from an association's `operations`.

    dicomd counts each request once, under the operation name ("store") or
    under the operation and its failure ("store_failed", "echo_not_permitted").
    """
    counts = dict.fromkeys(OPERATION_COUNTERS, 0)
    for key, count in (operations or {}).items():
        operation = key.split("_", 1)[0]
        if key not in SUBSET_KEYS and operation in counts:
            counts[operation] += count
    return counts


def request_increments(operations: dict[str, int]) -> dict[str, int]:
    """Turn an association's `operations` into increments of the request counters."""
    return {OPERATION_COUNTERS[name]: count for name, count in request_counts(operations).items()}
