"""The rate at which a receiver could store instances durably if receiving and decoding cost nothing.

For each instance this does only the file system and database work that
dicomd does before it sends a success status: an unnamed file written and
fsynced, linked into a series directory, the directory fsynced, and one
index row committed to SQLite in WAL mode with synchronous=FULL. The data
sets are read into memory first, so no network, DICOM or parsing work is
measured. No receiver that makes every instance durable before its
response can be faster on the same machine.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def durable_write_rate(files: list[Path], directory: Path) -> float:
    """Store the contents of `files` durably below `directory` (created here); return instances per second."""
    contents = [path.read_bytes() for path in files]
    incoming = directory / "incoming"
    series = directory / "study" / "series"
    incoming.mkdir(parents=True)
    series.mkdir(parents=True)
    index = sqlite3.connect(directory / "index.db", isolation_level=None)
    try:
        index.execute("PRAGMA journal_mode=WAL")
        index.execute("PRAGMA synchronous=FULL")
        index.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, path TEXT UNIQUE, size_bytes INTEGER)")

        started = time.perf_counter()
        for number, data in enumerate(contents):
            name = f"{number}.dcm"
            _write_and_link(data, incoming, series, name)
            index.execute("BEGIN")
            index.execute("INSERT INTO instances (path, size_bytes) VALUES (?, ?)", (name, len(data)))
            index.execute("COMMIT")
        return len(contents) / (time.perf_counter() - started)
    finally:
        index.close()


def _write_and_link(data: bytes, incoming: Path, series: Path, name: str) -> None:
    file = os.open(incoming, os.O_TMPFILE | os.O_WRONLY, 0o600)
    directory = os.open(series, os.O_RDONLY | os.O_DIRECTORY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(file, view):]
        os.fsync(file)
        os.link(f"/proc/self/fd/{file}", name, src_dir_fd=directory, dst_dir_fd=directory)
        os.fsync(directory)
    finally:
        os.close(directory)
        os.close(file)
