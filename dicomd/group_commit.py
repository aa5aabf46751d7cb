"""Index writes of concurrent C-STORE requests committed together, one transaction for several instances.

dicomd sends a C-STORE response only after the instance's index rows are committed, and each
commit waits for the database's fsync. When several associations store at
once, their handlers would each run a transaction and wait for each other's
write lock; SQLite's busy handler then sleeps 1 ms or more per conflict.
Here the first handler to arrive writes every request that is waiting, in
one transaction, while the others wait for it. The next one that finds no
transaction running takes the requests that arrived meanwhile. A handler alone writes
its own request at once, without a hand-over to another thread.

For SQLite, the writers of different worker processes also take turns on a
lock file next to the database, on which the kernel wakes the next writer
as soon as the lock is free. A turn ends with the commit, before the flush:
the transaction commits without waiting for the disk (synchronous=NORMAL),
and the writer then fdatasyncs the write-ahead log itself, after the lock is
released. The next writer's statements run during that flush, and the
flushes of different writers can overlap. A request still returns only once
its rows are on disk. The writer keeps one connection for these
transactions, instead of taking one from the pool and setting it to
synchronous=NORMAL and back for each.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

# The maximum number of requests in one transaction, so that none waits behind a long batch.
MAX_BATCH = 32


class IndexNotFlushed(Exception):
    """A transaction was committed, but flushing the database's log to disk failed.

    Its rows are in the database, and are lost only if the system stops
    before the next flush succeeds.
    """


@dataclass(eq=False)
class _Write:
    """One request's statements, and what became of them."""

    statements: Callable[[Connection], None]
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """A writer that runs the writes of concurrent threads in shared transactions on `engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._condition = threading.Condition()
        self._pending: list[_Write] = []
        self._writing = False
        self._lock_path = _lock_path(engine)
        self._lock_file: int | None = None
        self._log_path = f"{engine.url.database}-wal" if self._lock_path else None
        # SQLite only: the connection that commits without flushing, used by one writer at a time.
        self._unflushed_connection: Connection | None = None

    def write(self, statements: Callable[[Connection], None]) -> None:
        """Run `statements(connection)` in a transaction and return once it is committed.

        Raises what the statements or the commit raised, and IndexNotFlushed
        when the commit succeeded but its flush failed. When a transaction
        shared with other requests fails, each of its requests is run again
        alone, so that one failing request does not fail the others.
        """
        write = _Write(statements)
        with self._condition:
            self._pending.append(write)
            while not write.done:
                if self._writing:
                    self._condition.wait()
                    continue
                self._writing = True
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._condition.release()
                try:
                    self._commit(batch)
                finally:
                    # Only an exception that is not an Exception leaves a write
                    # unfinished, and its thread must not wait for it forever.
                    for unfinished in batch:
                        if not unfinished.done:
                            unfinished.error = RuntimeError("the index transaction was interrupted")
                            unfinished.done = True
                    self._condition.acquire()
                    self._writing = False
                    self._condition.notify_all()
        if write.error is not None:
            raise write.error

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self._database_turn(), self._transaction() as connection:
                for write in batch:
                    write.statements(connection)
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done = True
                return
            log.warning("a transaction of %d index writes failed (%s); writing each alone", len(batch), error)
            for write in batch:
                self._commit([write])
            return

        flush_error = None
        try:
            self._flush_log()
        except OSError as error:
            log.error("flushing the database's log after %d index writes failed: %s", len(batch), error)
            flush_error = IndexNotFlushed(f"flushing the database's log failed: {error}")
        for write in batch:
            write.error = flush_error
            write.done = True

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """Begin a transaction; for SQLite, one whose commit leaves the flush to _flush_log."""
        if self._log_path is None:
            with self.engine.begin() as connection:
                yield connection
            return
        connection = self._connection_committing_unflushed()
        try:
            with connection.begin():
                yield connection
        except BaseException:
            # An error such as a failed disk write may leave the connection
            # unusable, so the next transaction gets a new one.
            self._close_connection()
            raise

    def _connection_committing_unflushed(self) -> Connection:
        if self._unflushed_connection is None:
            connection = self.engine.connect()
            # Detached, it is closed instead of returned to the pool when it is
            # closed or collected, because no other writer may get synchronous=NORMAL.
            connection.detach()
            try:
                connection.connection.cursor().execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                connection.close()
                raise
            self._unflushed_connection = connection
        return self._unflushed_connection

    def _close_connection(self) -> None:
        connection, self._unflushed_connection = self._unflushed_connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close the connection and the lock file this writer keeps; a later write opens them again."""
        with self._condition:
            while self._writing:
                self._condition.wait()
            self._close_connection()
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None

    def _flush_log(self) -> None:
        """Make every committed transaction durable: fdatasync SQLite's write-ahead log.

        A transaction that is no longer in the log, or a log that is gone,
        is on disk already. SQLite (wal.c) syncs the log, copies it into the
        database file and syncs that file before the log starts again from
        its beginning, and deletes the log only after such a checkpoint.
        This is true only while no connection to the database uses synchronous=OFF.
        """
        if self._log_path is None:
            return
        try:
            descriptor = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)

    @contextmanager
    def _database_turn(self):
        """Hold the lock file that this process's writers share with other processes, if the database has one."""
        if self._lock_path is None:
            yield
            return
        if self._lock_file is None:
            self._lock_file = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)


@contextmanager
def commit_unflushed(connection: Connection) -> Iterator[None]:
    """Let the commits of a SQLite `connection` return without waiting for the disk (synchronous=NORMAL).

    A power loss may then undo those commits, unless the write-ahead log is
    flushed after them. The setting belongs to the connection, which goes
    back to the pool afterwards with synchronous=FULL again.
    """
    connection.connection.cursor().execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        try:
            connection.connection.cursor().execute("PRAGMA synchronous=FULL")
        except Exception:
            # A connection that might commit without flushing must not serve other writes.
            connection.invalidate()
            raise


def _lock_path(engine: Engine) -> str | None:
    """Return the lock file for a SQLite database file; other databases wait for row locks without polling."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return f"{database}-index-lock"
