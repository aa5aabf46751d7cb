"""Spreading new connections over the worker processes by their open associations.

All workers accept on the same listening sockets, the kernel wakes each of
them for a new connection, and the first to call accept() gets it. Two
devices that connect at about the same time can then both land on one
worker, where they share one interpreter lock while the other worker waits
for work. So every worker publishes the number of its open associations in an
array shared with the others. A worker with more open associations than
another waits a moment before it accepts, and the less busy worker takes
the connection meanwhile. After that moment the busier worker accepts
anyway, so a worker that is stuck or restarting delays a connection by at
most that much.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import SynchronizedArray

# How long a busier worker leaves a new connection to the others. A less busy
# worker's accepting thread needs the interpreter lock of its own process,
# which its association threads release at every system call, or within
# about the 5 ms switch interval when they compute: twice that is enough.
ACCEPT_DEFERRAL_SECONDS = 0.01


@dataclass
class AcceptBalance:
    """The open associations of each worker, in memory shared by the supervisor and all workers."""

    # Entry N - 1 belongs to worker N, and only that worker writes it while it runs.
    open_associations: SynchronizedArray

    @classmethod
    def create(cls, context: SpawnContext, workers: int) -> AcceptBalance:
        return cls(context.Array("q", workers, lock=False))

    def worker_load(self, worker_number: int) -> WorkerLoad:
        """Return the entry of worker `worker_number` (from 1), set to no open associations."""
        return WorkerLoad(self.open_associations, worker_number - 1)

    def clear(self, worker_number: int) -> None:
        """Set the entry of worker `worker_number`, which has exited, to no open associations."""
        self.open_associations[worker_number - 1] = 0


class WorkerLoad:
    """One worker's entry of an AcceptBalance: it counts the worker's associations and decides when to defer."""

    def __init__(self, open_associations: SynchronizedArray, index: int):
        self._shared = open_associations
        self._index = index
        self._lock = threading.Lock()
        self._open = 0
        self._shared[index] = 0

    def opened(self) -> None:
        """Count an association that this worker has started."""
        with self._lock:
            self._open += 1
            self._shared[self._index] = self._open

    def closed(self) -> None:
        """Count an association of this worker as ended."""
        with self._lock:
            self._open -= 1
            self._shared[self._index] = self._open

    def should_defer(self) -> bool:
        """Return whether another worker has fewer open associations than this one."""
        counts = self._shared[:]
        own = counts.pop(self._index)
        return bool(counts) and own > min(counts)
