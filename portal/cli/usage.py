import logging
from datetime import timedelta

import click
from flask.cli import with_appcontext
from sqlalchemy import delete, select, update

from portal import audit
from portal.extensions import db
from portal.models import Association, Instance, utcnow

log = logging.getLogger(__name__)

# Rows deleted per transaction, so a large prune never holds a long write lock.
PRUNE_BATCH = 5000


@click.group()
def usage():
    """Manage recorded usage."""


@usage.command("prune")
@click.option("--older-than", "days", type=click.IntRange(min=1), required=True,
              help="Remove association rows that started more than this many days ago.")
@with_appcontext
def prune(days: int):
    """Remove old association rows from the connection log.

    Identity totals and daily usage counts are kept, so usage pages stay right.
    """
    cutoff = utcnow() - timedelta(days=days)
    old = select(Association.id).where(Association.started_at < cutoff)

    removed = 0
    while True:
        batch = db.session.scalars(old.order_by(Association.id).limit(PRUNE_BATCH)).all()
        if not batch:
            break
        # Stored instances keep their rows and lose only the link to the pruned association.
        db.session.execute(update(Instance).where(Instance.association_id.in_(batch)).values(association_id=None))
        db.session.execute(delete(Association).where(Association.id.in_(batch)))
        db.session.commit()
        removed += len(batch)

    audit.record("usage.prune", "associations", f"older than {days} days",
                 after={"removed": removed, "cutoff": cutoff.isoformat()})
    db.session.commit()
    log.info("pruned %d association rows that started before %s", removed, cutoff.isoformat())
    click.echo(f"Removed {removed} association rows that started before {cutoff.isoformat(timespec='seconds')}.")
