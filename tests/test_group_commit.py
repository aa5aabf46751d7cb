"""Index writes of concurrent requests sharing transactions (dicomd.group_commit), on a real SQLite file."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, event, insert, select

from dicomd.group_commit import GroupCommit
from portal.database import configure_engine

WAIT_SECONDS = 10

metadata = MetaData()
rows = Table("rows", metadata, Column("id", Integer, primary_key=True), Column("name", String, nullable=False))


@pytest.fixture
def engine(tmp_path):
    engine = configure_engine(create_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    metadata.create_all(engine)
    commits = []
    event.listen(engine, "commit", lambda connection: commits.append(1))
    engine.commits = commits
    yield engine
    engine.dispose()


def insert_row(name: str):
    def statements(connection):
        connection.execute(insert(rows).values(name=name))
    return statements


def wait_until_pending(group: GroupCommit, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while len(group._pending) < count:
        assert time.monotonic() < deadline, f"fewer than {count} writes were queued"
        time.sleep(0.01)


def stored_names(engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(select(rows.c.name)))


def test_single_write_committed_at_once(engine):
    GroupCommit(engine).write(insert_row("alone"))

    assert stored_names(engine) == {"alone"}
    assert len(engine.commits) == 1


class Writers:
    """Threads that write through one GroupCommit, the first of which holds its transaction open until released."""

    def __init__(self, group: GroupCommit):
        self.group = group
        self.outcomes: dict[str, str] = {}
        self.threads: list[threading.Thread] = []
        self._first_running = threading.Event()
        self._release_first = threading.Event()

    def start_first(self, name: str) -> None:
        def held(connection):
            self._first_running.set()
            assert self._release_first.wait(WAIT_SECONDS)
            connection.execute(insert(rows).values(name=name))

        self._start(name, held)
        assert self._first_running.wait(WAIT_SECONDS)

    def start_waiting(self, name: str, statements) -> None:
        """Start a writer and return once it waits for the first transaction."""
        self._start(name, statements)
        wait_until_pending(self.group, len(self.threads) - 1)

    def finish(self) -> dict[str, str]:
        self._release_first.set()
        for thread in self.threads:
            thread.join(WAIT_SECONDS)
        return self.outcomes

    def _start(self, name: str, statements) -> None:
        def write():
            try:
                self.group.write(statements)
                self.outcomes[name] = "committed"
            except Exception as error:
                self.outcomes[name] = type(error).__name__

        self.threads.append(threading.Thread(target=write))
        self.threads[-1].start()


def test_waiting_writes_share_one_transaction(engine):
    writers = Writers(GroupCommit(engine))
    writers.start_first("first")
    names = [f"waiting {index}" for index in range(5)]
    for name in names:
        writers.start_waiting(name, insert_row(name))

    outcomes = writers.finish()

    assert outcomes == {name: "committed" for name in ["first", *names]}
    assert stored_names(engine) == {"first", *names}
    # One commit for the first write, one for the five that waited.
    assert len(engine.commits) == 2


def test_failing_write_fails_alone(engine):
    def failing(connection):
        connection.execute(insert(rows).values(name=None))

    writers = Writers(GroupCommit(engine))
    writers.start_first("first")
    # Started one after another, so the shared transaction runs them in this order.
    writers.start_waiting("before", insert_row("before"))
    writers.start_waiting("failing", failing)
    writers.start_waiting("after", insert_row("after"))

    outcomes = writers.finish()

    assert outcomes == {"first": "committed", "before": "committed", "failing": "IntegrityError",
                        "after": "committed"}
    assert stored_names(engine) == {"first", "before", "after"}


def test_writer_connection_stays_out_of_pool(engine):
    group = GroupCommit(engine)
    group.write(insert_row("one"))
    connection = group._unflushed_connection
    group.write(insert_row("two"))

    # One connection for both transactions, which never went back to the pool.
    assert group._unflushed_connection is connection
    assert synchronous_settings(engine) == {2}

    group.close()
    group.write(insert_row("after close"))
    group.close()

    assert stored_names(engine) == {"one", "two", "after close"}
    # Closed, the connection did not go back to the pool either.
    assert synchronous_settings(engine) == {2}


def test_writer_connection_replaced_after_failure(engine):
    def failing(connection):
        connection.execute(insert(rows).values(name=None))

    group = GroupCommit(engine)
    group.write(insert_row("before"))
    first_connection = group._unflushed_connection
    with pytest.raises(Exception, match="NOT NULL"):
        group.write(failing)
    group.write(insert_row("after"))

    assert group._unflushed_connection is not first_connection
    assert first_connection.closed
    assert stored_names(engine) == {"before", "after"}
    group.close()


def test_sqlite_writers_share_lock_file(engine, tmp_path):
    GroupCommit(engine).write(insert_row("one"))

    assert (tmp_path / "index.db-index-lock").exists()


def test_no_lock_file_for_postgresql():
    engine = create_engine("postgresql+psycopg://pacs@127.0.0.1:1/pacs")

    group = GroupCommit(engine)

    assert group._lock_path is None
    # PostgreSQL's commit waits for its own log flush.
    assert group._log_path is None


def note_lock_and_flush(monkeypatch) -> list[str]:
    """Collect the lock file's locks and unlocks and the fdatasync calls, in order, as they happen."""
    calls = []
    flock, fdatasync = fcntl.flock, os.fdatasync

    def noting_flock(descriptor, operation):
        calls.append({fcntl.LOCK_EX: "lock", fcntl.LOCK_UN: "unlock"}[operation])
        flock(descriptor, operation)

    def noting_fdatasync(descriptor):
        calls.append(f"fdatasync {os.path.basename(os.readlink(f'/proc/self/fd/{descriptor}'))}")
        fdatasync(descriptor)

    monkeypatch.setattr(fcntl, "flock", noting_flock)
    monkeypatch.setattr(os, "fdatasync", noting_fdatasync)
    return calls


def synchronous_settings(engine) -> set[int]:
    """Return the `PRAGMA synchronous` value of every connection in the pool (2 is FULL)."""
    connections = [engine.connect() for _ in range(max(engine.pool.checkedin(), 1))]
    try:
        return {connection.exec_driver_sql("PRAGMA synchronous").scalar() for connection in connections}
    finally:
        for connection in connections:
            connection.close()


def test_sqlite_log_flushed_after_unlock(engine, monkeypatch):
    calls = note_lock_and_flush(monkeypatch)
    commit_settings = []
    event.listen(engine, "commit", lambda connection: commit_settings.append(
        connection.exec_driver_sql("PRAGMA synchronous").scalar()))

    GroupCommit(engine).write(insert_row("one"))

    # The commit itself does not wait for the disk (NORMAL). The write-ahead
    # log is flushed after the lock is released, so the next writer need not wait.
    assert commit_settings == [1]
    assert calls == ["lock", "unlock", "fdatasync index.db-wal"]
    assert stored_names(engine) == {"one"}
    assert synchronous_settings(engine) == {2}


def test_failed_flush_fails_whole_batch(engine, monkeypatch):
    def failing_fdatasync(descriptor):
        raise OSError(errno.EIO, "Input/output error")

    writers = Writers(GroupCommit(engine))
    writers.start_first("first")
    writers.start_waiting("second", insert_row("second"))
    writers.start_waiting("third", insert_row("third"))
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)

    outcomes = writers.finish()

    # The rows are committed, so they are not written again one by one.
    assert outcomes == {"first": "IndexNotFlushed", "second": "IndexNotFlushed", "third": "IndexNotFlushed"}
    assert stored_names(engine) == {"first", "second", "third"}
    assert len(engine.commits) == 2
