"""The receive path of a real `dicomd run`: workers sharing the ports, and a 256 MiB instance arriving intact."""

from __future__ import annotations

import hashlib
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from benchmarks.datasets import CT_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE, ImageShape, write_instance
from portal.certificates import private_ca_paths
from portal.models import Instance
from tests.dicomd_process import TOOL_TIMEOUT_SECONDS, add_identity, reload, storescu, wait_for_end
from tests.reliability_tools import incoming_files
from tests.tools import dcmtk_environ, require_tool

pytestmark = pytest.mark.dcmtk

WORKERS = 2
CONCURRENT_SENDERS = 4
# Rounds of concurrent senders before the test gives up on seeing every worker.
MAX_ROUNDS = 10
ACCEPTED_LINE = re.compile(r" INFO (dicomd-worker-\d+) dicomd\.handlers: association (\d+) from \S+ at \S+ to PACS accepted")

LARGE_SHAPE = ImageShape(rows=1024, columns=1024, frames=256, bits=8)


@pytest.fixture
def environ(environ):
    return {**environ, "DICOMD_WORKERS": str(WORKERS)}


def workers_by_association(log: str) -> dict[int, str]:
    """Map each accepted association's record id to the worker process that logged it."""
    return {int(record_id): worker for worker, record_id in ACCEPTED_LINE.findall(log)}


def small_instances(directory: Path, count: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        path = directory / f"{index:03d}.dcm"
        write_instance(path, ImageShape(rows=16, columns=16), sop_class_uid=CT_IMAGE_STORAGE,
                       study_uid=study, series_uid=series, seed=index)
        paths.append(path)
    return paths


def tls_echo(port: int, ca_file: Path) -> subprocess.CompletedProcess:
    command = require_tool("echoscu", "dcmtk")
    return subprocess.run(
        [command, "+tla", "+cf", str(ca_file), "-aet", "SENDER", "-aec", "PACS", "127.0.0.1", str(port)],
        env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS,
    )


def sha256_of_tail(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        source.seek(-length, 2)
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def test_workers_share_plain_port(dicomd, session, settings, tmp_path):
    identity = add_identity(session, "SENDER")
    sources = small_instances(tmp_path, CONCURRENT_SENDERS * MAX_ROUNDS)

    sent = []
    with ThreadPoolExecutor(CONCURRENT_SENDERS) as pool:
        for start in range(0, len(sources), CONCURRENT_SENDERS):
            batch = sources[start:start + CONCURRENT_SENDERS]
            results = list(pool.map(lambda source: storescu(dicomd.port, "SENDER", [source]), batch))
            assert [result.returncode for result in results] == [0] * len(batch), [r.stderr for r in results]
            sent += batch
            if len(set(workers_by_association(dicomd.log()).values())) == WORKERS:
                break

    workers = workers_by_association(dicomd.log())
    assert set(workers.values()) == {f"dicomd-worker-{number}" for number in range(1, WORKERS + 1)}
    rows = wait_for_end(session)
    assert len(rows) == len(sent)
    assert set(workers) == {row.id for row in rows}
    assert [row.operations for row in rows] == [{"store": 1}] * len(sent)
    assert [row.instances_received for row in rows] == [1] * len(sent)
    session.expire_all()
    assert session.scalar(select(func.count(Instance.id))) == len(sent)
    assert session.scalar(select(func.count(func.distinct(Instance.sop_instance_uid)))) == len(sent)
    assert reload(session, identity).instances_received == len(sent)
    stored = [path for path in settings.storage_dir.rglob("*.dcm") if ".incoming" not in path.parts]
    assert len(stored) == len(sent)


def test_workers_share_tls_port(dicomd, session, settings, environ):
    add_identity(session, "SENDER", allow_anonymous_tls=True)
    ca_file = private_ca_paths(settings)[0]
    tls_port = int(environ["DICOM_TLS_PORT"])

    with ThreadPoolExecutor(CONCURRENT_SENDERS) as pool:
        for _ in range(MAX_ROUNDS):
            results = list(pool.map(lambda _: tls_echo(tls_port, ca_file), range(CONCURRENT_SENDERS)))
            assert [result.returncode for result in results] == [0] * CONCURRENT_SENDERS, results[0].stderr
            if len(set(workers_by_association(dicomd.log()).values())) == WORKERS:
                break

    workers = workers_by_association(dicomd.log())
    assert set(workers.values()) == {f"dicomd-worker-{number}" for number in range(1, WORKERS + 1)}
    rows = wait_for_end(session)
    assert {row.transport for row in rows} == {"tls"}
    assert [row.operations for row in rows] == [{"echo": 1}] * len(rows)


def test_large_instance_arrives_intact(dicomd, session, settings, tmp_path):
    add_identity(session, "ECHOCART")
    source = tmp_path / "cine.dcm"
    instance_uid = write_instance(source, LARGE_SHAPE, sop_class_uid=US_MULTIFRAME_IMAGE_STORAGE,
                                  study_uid=generate_uid(), series_uid=generate_uid())

    result = storescu(dicomd.port, "ECHOCART", [source])

    assert result.returncode == 0, result.stderr
    session.expire_all()
    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == instance_uid))
    assert instance is not None
    stored = settings.storage_dir / instance.path
    assert instance.size_bytes == stored.stat().st_size
    # write_instance puts Pixel Data last, so the file's tail is the pixel data.
    assert sha256_of_tail(stored, LARGE_SHAPE.pixel_bytes) == sha256_of_tail(source, LARGE_SHAPE.pixel_bytes)
    assert incoming_files(settings.storage_dir) == []
