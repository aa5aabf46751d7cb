"""Soak test: concurrent senders, random aborts and killed workers, then a count of what was lost.

Starts `dicomd run` with two workers on loopback and a fresh SQLite
database. SOAK_SENDERS pynetdicom senders (default 4) send Secondary Capture
instances of 64 KiB to 2 MiB for SOAK_SECONDS (default 60). About one
transfer in ten ends in an A-ABORT or a TCP reset in the middle, and every
10 to 20 seconds a worker gets SIGKILL. A sender sends an instance again
until it is acknowledged or the time is up. Afterwards it prints the
instances sent, acknowledged, stored, lost and duplicated. Lost means
acknowledged but not stored identically, and must be 0. Duplicated means
stored again by a repeated send. It exits 1 if any instance was lost or an
unknown file is at a final path.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from benchmarks.ingest import CALLING_AE_TITLE, DICOMD, free_port, prepare_dicomd_template
from portal.database import make_engine
from portal.models import Association
from tests.reliability_tools import (
    break_after_pdus,
    final_files,
    final_path,
    make_instance,
    sender,
    stored_identically,
    worker_pids,
)

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
SENDERS = int(os.environ.get("SOAK_SENDERS", "4"))
WORKERS = 2
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
ABORT_PROBABILITY = 0.1
KILL_INTERVAL_SECONDS = (10, 20)
# The supervisor stops dicomd when a worker dies within 10 seconds of its
# start (MIN_WORKER_UPTIME_SECONDS in dicomd.supervisor), so only older workers are killed.
KILLABLE_AFTER_SECONDS = 12
INSTANCE_SIZES = [64 * 1024, 256 * 1024, 1024 * 1024, 2 * 1024 * 1024]


class Tally:
    """Counts shared by the sender threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()
        self.acknowledged = {}

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def acknowledge(self, dataset) -> None:
        with self.lock:
            self.acknowledged[dataset.SOPInstanceUID] = dataset


def send_loop(port: int, deadline: float, tally: Tally, seed: int) -> None:
    """Send new instances until `deadline`, each again after a failure, on associations of up to 10 instances."""
    chooser = random.Random(seed)
    pending = None
    while time.monotonic() < deadline:
        assoc = sender(CALLING_AE_TITLE, acse=10, dimse=30, network=30).associate("127.0.0.1", port, ae_title="PACS")
        if not assoc.is_established:
            tally.add("associations_failed")
            time.sleep(0.5)
            continue
        for _ in range(10):
            if time.monotonic() >= deadline:
                break
            if pending is None:
                pending = make_instance(chooser.choice(INSTANCE_SIZES))
                tally.add("sent")
            breaking = pending.Rows >= 1024 and chooser.random() < ABORT_PROBABILITY
            if breaking:
                # The command is the first P-DATA PDU; the break comes after the first data fragment.
                break_after_pdus(assoc, 2, chooser.choice(["abort", "reset"]))
                tally.add("broken_transfers")
            tally.add("attempts")
            try:
                response = assoc.send_c_store(pending)
            except (RuntimeError, OSError):
                response = None
            status = response.Status if response is not None and "Status" in response else None
            if status == 0x0000:
                tally.acknowledge(pending)
                pending = None
            if breaking or not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def kill_loop(process: subprocess.Popen, deadline: float, tally: Tally, stop: threading.Event) -> None:
    """SIGKILL a worker older than KILLABLE_AFTER_SECONDS every 10 to 20 seconds until `deadline`."""
    first_seen: dict[int, float] = {}
    chooser = random.Random(1)
    next_kill = time.monotonic() + chooser.uniform(*KILL_INTERVAL_SECONDS)
    while time.monotonic() < deadline and not stop.is_set():
        now = time.monotonic()
        for pid in worker_pids(process.pid):
            first_seen.setdefault(pid, now)
        if now >= next_kill:
            killable = [pid for pid in worker_pids(process.pid) if now - first_seen[pid] > KILLABLE_AFTER_SECONDS]
            if killable:
                os.kill(chooser.choice(killable), signal.SIGKILL)
                tally.add("workers_killed")
                next_kill = now + chooser.uniform(*KILL_INTERVAL_SECONDS)
        stop.wait(0.5)


def start_dicomd(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environ = {**os.environ, "DATA_DIR": str(data_dir), "DICOM_HOST": "127.0.0.1", "DICOM_PORT": str(port),
               "DICOM_TLS_PORT": str(free_port()), "DICOMD_WORKERS": str(WORKERS)}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen([str(DICOMD), "run"], env=environ, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while "dicomd ready" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dicomd did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return process, port


def main() -> None:
    # Each broken transfer and killed worker makes pynetdicom log an error on the sender's side.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="soak-") as temp:
        root = Path(temp)
        settings = prepare_dicomd_template(root / "data")
        log_path = root / "dicomd.log"
        process, port = start_dicomd(settings.data_dir, log_path)
        print(f"Sending for {SOAK_SECONDS:g} s with {SENDERS} senders and {WORKERS} dicomd workers...", flush=True)

        tally = Tally()
        deadline = time.monotonic() + SOAK_SECONDS
        stop_killing = threading.Event()
        killer = threading.Thread(target=kill_loop, args=(process, deadline, tally, stop_killing))
        senders = [threading.Thread(target=send_loop, args=(port, deadline, tally, seed)) for seed in range(SENDERS)]
        killer.start()
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        stop_killing.set()
        killer.join()

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
        storage_dir = settings.storage_dir
        acknowledged = tally.acknowledged
        lost = [uid for uid, dataset in acknowledged.items() if not stored_identically(storage_dir, dataset)]
        known_paths = {final_path(storage_dir, dataset) for dataset in acknowledged.values()}
        stored = final_files(storage_dir)
        # A final file that was never acknowledged comes from a transfer whose
        # response was lost to a killed worker or a reset. It is counted but is no failure.
        unacknowledged = stored - known_paths
        engine = make_engine(settings.database_url)
        with engine.connect() as connection:
            operations = [row.operations or {} for row in connection.execute(select(Association.operations))]
        engine.dispose()
        duplicated = sum(counts.get("store_duplicate", 0) for counts in operations)

        counts = tally.counts
        print(f"instances sent:          {counts['sent']}")
        print(f"C-STORE attempts:        {counts['attempts']}")
        print(f"acknowledged:            {len(acknowledged)}")
        print(f"stored:                  {len(stored)}")
        print(f"  of them unacknowledged: {len(unacknowledged)}")
        print(f"lost:                    {len(lost)}")
        print(f"duplicated:              {duplicated}")
        print(f"broken transfers:        {counts['broken_transfers']}")
        print(f"workers killed:          {counts['workers_killed']}")
        print(f"associations failed:     {counts['associations_failed']}")
        print(f"dicomd exit code:        {exit_code}")
        if lost or exit_code != 0:
            print(f"FAILED: lost {lost[:10]}; the dicomd log follows\n{log_path.read_text()[-5000:]}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
