"""How `dicomd run` spreads connections over its workers, and how soon a closed connection stops counting."""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import time

import pytest

from dicomd.balance import AcceptBalance
from tests.dicomd_process import add_identity
from tests.reliability_tools import sender

WORKERS = 2
ASSOCIATIONS = 8
WORKER_PID = re.compile(r"worker (\d+) ready \(process (\d+)\)")
PORT_CHECKS = 5
# Seconds the threads of closed port checks get to end. pynetdicom alone kept them for the ACSE timeout.
THREADS_END_SECONDS = 5
ACSE_TIMEOUT_SECONDS = 60


@pytest.fixture
def environ(environ):
    return {**environ, "DICOMD_WORKERS": str(WORKERS), "DICOM_ACSE_TIMEOUT": str(ACSE_TIMEOUT_SECONDS)}


def accepting_worker(dicomd, local_port: int) -> str:
    """Return the worker that logged the acceptance of the association from `local_port`."""
    pattern = re.compile(rf" INFO (dicomd-worker-\d+) dicomd\.handlers: association \d+ from \S+ at 127\.0\.0\.1:{local_port} ")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = pattern.search(dicomd.log())
        if found:
            return found.group(1)
        time.sleep(0.05)
    pytest.fail(f"no worker logged the association from port {local_port}:\n{dicomd.log()}")


def worker_threads(dicomd) -> dict[int, int]:
    """Return the number of threads of each worker process, by worker number."""
    pids = {int(number): int(pid) for number, pid in WORKER_PID.findall(dicomd.log())}
    assert len(pids) == WORKERS, dicomd.log()
    return {number: len(os.listdir(f"/proc/{pid}/task")) for number, pid in pids.items()}


def fewer_or_as_many(counts: dict[int, int], limits: dict[int, int]) -> bool:
    """Return whether each worker's count is at most its limit."""
    return all(counts[number] <= limits[number] for number in limits)


def test_associations_alternate_between_workers(dicomd, session):
    add_identity(session, "SENDER")
    ae = sender("SENDER")
    opened = []
    try:
        for _ in range(ASSOCIATIONS):
            association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS")
            assert association.is_established
            opened.append(association)

        workers = [accepting_worker(dicomd, association.dul.socket.socket.getsockname()[1]) for association in opened]
    finally:
        for association in opened:
            association.release()

    # Each association arrived while the other worker had fewer open, or as many.
    for first, second in zip(workers[0::2], workers[1::2]):
        assert first != second, workers


def test_closed_port_check_ends_its_threads(dicomd):
    before = worker_threads(dicomd)

    for _ in range(PORT_CHECKS):
        socket.create_connection(("127.0.0.1", dicomd.port), timeout=5).close()

    # The count before may still include the threads of the check that found dicomd ready.
    deadline = time.monotonic() + THREADS_END_SECONDS
    while not fewer_or_as_many(worker_threads(dicomd), before) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = worker_threads(dicomd)
    assert fewer_or_as_many(after, before), (after, before)


def test_busier_worker_defers():
    balance = AcceptBalance.create(multiprocessing.get_context("spawn"), 3)
    first, second, third = (balance.worker_load(number) for number in (1, 2, 3))
    assert [load.should_defer() for load in (first, second, third)] == [False, False, False]

    first.opened()
    assert [load.should_defer() for load in (first, second, third)] == [True, False, False]

    second.opened()
    third.opened()
    assert [load.should_defer() for load in (first, second, third)] == [False, False, False]

    second.closed()
    assert [load.should_defer() for load in (first, second, third)] == [True, False, True]

    balance.clear(1)
    assert [load.should_defer() for load in (first, second, third)] == [False, False, True]


def test_only_worker_never_defers():
    load = AcceptBalance.create(multiprocessing.get_context("spawn"), 1).worker_load(1)
    load.opened()
    load.opened()
    assert not load.should_defer()
