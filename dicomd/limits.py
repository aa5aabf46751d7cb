"""Limits on open associations, counted across all worker processes of one dicomd.

The supervisor creates one shared-memory table with a row of slots per
worker. A worker writes the identity id of each association it accepts into
a free slot of its own row and clears the slot when the association ends, so
the totals over all rows are the open associations of this dicomd. When a
worker dies, the supervisor clears its row before starting the replacement,
so slots of a killed worker are freed before new associations arrive there.

The limits apply per dicomd process tree. Several dicomd hosts behind a load
balancer each enforce their own limits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Lock as ProcessLock

log = logging.getLogger(__name__)

# Seconds to wait for the table's lock. A worker killed while it held the lock
# would leave it held forever, so after this wait the check runs unlocked.
LOCK_TIMEOUT_SECONDS = 1.0

FREE_SLOT = 0


class LimitExceeded(Exception):
    """Accepting one more association would exceed a limit; the message names the limit."""


@dataclass
class AssociationLimits:
    """The shared table of open associations and the two limits it enforces.

    The object is pickled into every worker process, and the shared array and
    lock go with it.
    """

    maximum: int
    maximum_per_identity: int
    workers: int
    slots: SynchronizedArray
    # The Association row id of each taken slot, so that the supervisor can
    # close the rows of a worker that died.
    records: SynchronizedArray
    lock: ProcessLock

    @classmethod
    def create(cls, context: SpawnContext, *, maximum: int, maximum_per_identity: int, workers: int) -> AssociationLimits:
        # One worker may hold every open association, so each row has `maximum` slots.
        slots = context.Array("q", workers * maximum, lock=False)
        records = context.Array("q", workers * maximum, lock=False)
        return cls(maximum, maximum_per_identity, workers, slots, records, context.Lock())

    def reserve(self, worker_number: int, identity_id: int) -> int:
        """Take a slot of worker `worker_number` (from 1) for `identity_id` and return its index.

        Raises LimitExceeded when this dicomd already has `maximum`
        associations open, or the identity has `maximum_per_identity`.
        """
        locked = self.lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        if not locked:
            log.warning("the association table's lock was not released within %s seconds; checking the limits without it",
                        LOCK_TIMEOUT_SECONDS)
        try:
            values = self.slots[:]
            open_total = sum(1 for value in values if value != FREE_SLOT)
            if open_total >= self.maximum:
                raise LimitExceeded(f"{open_total} associations are open, the limit is {self.maximum} (DICOMD_MAX_ASSOCIATIONS)")
            open_for_identity = values.count(identity_id)
            if open_for_identity >= self.maximum_per_identity:
                raise LimitExceeded(
                    f"{open_for_identity} associations of this identity are open, the limit is "
                    f"{self.maximum_per_identity} (DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY)"
                )

            row_start = (worker_number - 1) * self.maximum
            for index in range(row_start, row_start + self.maximum):
                if values[index] == FREE_SLOT:
                    self.slots[index] = identity_id
                    self.records[index] = 0
                    return index
            raise LimitExceeded(f"worker {worker_number} has no free slot, the limit is {self.maximum}")
        finally:
            if locked:
                self.lock.release()

    def attach_record(self, index: int, association_id: int) -> None:
        """Note the Association row of the association holding slot `index`."""
        self.records[index] = association_id

    def release(self, index: int) -> None:
        """Free the slot at `index`, taken by `reserve`."""
        self.slots[index] = FREE_SLOT
        self.records[index] = 0

    def clear_worker(self, worker_number: int) -> list[int]:
        """Free every slot of worker `worker_number`, which has exited; return the Association ids they held."""
        row_start = (worker_number - 1) * self.maximum
        association_ids = []
        for index in range(row_start, row_start + self.maximum):
            if self.slots[index] != FREE_SLOT:
                if self.records[index]:
                    association_ids.append(self.records[index])
                self.slots[index] = FREE_SLOT
                self.records[index] = 0
        return association_ids
