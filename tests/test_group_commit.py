"""Index writes of concurrent requests sharing transactions (dicomd.group_commit), on a real SQLite file."""

from __future__ import annotations

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


def test_waiting_writes_share_one_transaction(engine):
    group = GroupCommit(engine)
    first_running, release_first = threading.Event(), threading.Event()

    def slow_first(connection):
        first_running.set()
        assert release_first.wait(WAIT_SECONDS)
        connection.execute(insert(rows).values(name="first"))

    errors = []

    def write(statements):
        try:
            group.write(statements)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(slow_first,))]
    threads[0].start()
    assert first_running.wait(WAIT_SECONDS)
    for index in range(5):
        threads.append(threading.Thread(target=write, args=(insert_row(f"waiting {index}"),)))
        threads[-1].start()
    # The five wait for the first transaction, and each is queued before it ends.
    wait_until_pending(group, 5)
    release_first.set()
    for thread in threads:
        thread.join(WAIT_SECONDS)

    assert errors == []
    assert stored_names(engine) == {"first"} | {f"waiting {index}" for index in range(5)}
    # One commit for the first write, one for the five that waited.
    assert len(engine.commits) == 2


def test_failing_write_fails_alone(engine):
    group = GroupCommit(engine)
    first_running, release_first = threading.Event(), threading.Event()

    def slow_first(connection):
        first_running.set()
        assert release_first.wait(WAIT_SECONDS)

    def failing(connection):
        connection.execute(insert(rows).values(name=None))

    outcomes = {}

    def write(label, statements):
        try:
            group.write(statements)
            outcomes[label] = "committed"
        except Exception as error:
            outcomes[label] = type(error).__name__

    first = threading.Thread(target=write, args=("first", slow_first))
    first.start()
    assert first_running.wait(WAIT_SECONDS)
    others = [
        threading.Thread(target=write, args=("before", insert_row("before"))),
        threading.Thread(target=write, args=("failing", failing)),
        threading.Thread(target=write, args=("after", insert_row("after"))),
    ]
    # Started one after another, so the batch runs them in this order.
    for count, thread in enumerate(others, start=1):
        thread.start()
        wait_until_pending(group, count)
    release_first.set()
    for thread in [first, *others]:
        thread.join(WAIT_SECONDS)

    assert outcomes == {"first": "committed", "before": "committed", "failing": "IntegrityError",
                        "after": "committed"}
    assert stored_names(engine) == {"before", "after"}


def test_sqlite_writers_share_lock_file(engine, tmp_path):
    GroupCommit(engine).write(insert_row("one"))

    assert (tmp_path / "index.db-index-lock").exists()


def test_no_lock_file_for_postgresql():
    engine = create_engine("postgresql+psycopg://pacs@127.0.0.1:1/pacs")

    assert GroupCommit(engine)._lock_path is None
