"""C-STORE and C-ECHO throughput of dicomd against DCMTK's storescp, a bare pynetdicom SCP and Orthanc.

Generates the data sets once, then for each run and workload starts each
receiver on loopback with an empty storage directory, sends with DCMTK's
storescu or echoscu (with TCP_NODELAY=1), and stops the receiver. Orthanc
runs in a network namespace of its own that has only a loopback interface,
and its senders run in that namespace too. Prints one table with the median
rate of RUNS runs, each receiver's ratio to storescp and dicomd's ratio to
Orthanc. The 256 MiB instance is sent once per receiver and reports the
receiver's peak resident memory (VmHWM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask_migrate import upgrade

from benchmarks.datasets import CT_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE, ImageShape, write_instance
from benchmarks.durable_floor import durable_write_rate
from portal import create_app
from portal.certificates import resolve_tls_files
from portal.extensions import db
from portal.identities.service import create_identity
from portal.settings import Settings

# BENCH_RUNS lowers the repetitions for a quick look; the documented table uses the default.
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
START_TIMEOUT_SECONDS = 60
SEND_TIMEOUT_SECONDS = 600
CALLING_AE_TITLE = "BENCH"
DICOMD = Path(sys.executable).parent / "dicomd"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Workload:
    """A load to send: `senders` storescu processes at once, each with a share of the data set, or `echoes` C-ECHO associations."""

    name: str
    data_set: str = ""
    senders: int = 1
    echoes: int = 0
    tls: bool = False
    runs: int = RUNS
    measure_memory: bool = False
    dicomd_workers: int | None = None
    target: str = ""


WORKLOADS = [
    Workload("1,000 × 64 KB, one association", "small", target="≥ 0.50"),
    Workload("200 × 512 KB, one association", "medium", target="≥ 0.50"),
    Workload("50 × 1 MB US multi-frame, one association", "cine", target="≥ 0.50"),
    Workload("4 senders × 250 × 64 KB, DICOMD_WORKERS=2", "small", senders=4, dicomd_workers=2,
             target="≥ 0.70 of storescp --fork"),
    Workload("200 C-ECHO associations, one after another", echoes=200, target="≥ 1.00"),
    Workload("1,000 × 64 KB over TLS, one association", "small", tls=True, target="≥ 0.60"),
    Workload("one 256 MiB US multi-frame instance", "huge", runs=1, measure_memory=True,
             target="peak RSS < 128 MiB"),
]

# The one-association workloads for which the durable write floor is measured, and its row label.
FLOOR_WORKLOADS = [workload.name for workload in WORKLOADS if workload.senders == 1 and workload.data_set
                   and not workload.tls and not workload.measure_memory]
FLOOR_LABEL = "durable write floor"

# Data set name: (number of instances, SOP class, pixel matrix).
DATA_SETS = {
    "small": (1000, CT_IMAGE_STORAGE, ImageShape(rows=128, columns=256)),
    "medium": (200, CT_IMAGE_STORAGE, ImageShape(rows=512, columns=512)),
    "cine": (50, US_MULTIFRAME_IMAGE_STORAGE, ImageShape(rows=128, columns=170, frames=16, samples=3, bits=8)),
    "huge": (1, US_MULTIFRAME_IMAGE_STORAGE, ImageShape(rows=1024, columns=1024, frames=256, bits=8)),
}


@dataclass
class Measurement:
    """The median rate (per second) and peak memory (bytes) of one receiver on one workload."""

    rates: list[float] = field(default_factory=list)
    peak_rss: int | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dcmtk_environ() -> dict[str, str]:
    # Debian's DCMTK delays each small message by about 40 ms without TCP_NODELAY.
    return {**os.environ, "TCP_NODELAY": "1"}


def generate(data_dir: Path) -> dict[str, list[Path]]:
    """Write every data set below `data_dir`; return the files of each."""
    files = {}
    for name, (count, sop_class, shape) in DATA_SETS.items():
        directory = data_dir / name
        directory.mkdir()
        study, series = f"2.25.{name_number(name)}.1", f"2.25.{name_number(name)}.2"
        files[name] = []
        for index in range(count):
            path = directory / f"{index:04d}.dcm"
            write_instance(path, shape, sop_class_uid=sop_class, study_uid=study, series_uid=series, seed=index)
            files[name].append(path)
    return files


def name_number(name: str) -> int:
    return int.from_bytes(name.encode(), "big")


def prepare_dicomd_template(data_dir: Path) -> Settings:
    """Create a DATA_DIR with an upgraded SQLite database, the identity BENCH and the TLS files."""
    settings = Settings.from_env({"DATA_DIR": str(data_dir)})
    app = create_app(settings, TESTING=True)
    with app.app_context():
        upgrade()
        create_identity(db.session, name="Benchmark sender", ae_title=CALLING_AE_TITLE, allow_anonymous_tls=True)
        db.session.commit()
        db.engine.dispose()
    resolve_tls_files(settings)
    return settings


class Receiver:
    """One kind of receiver, started fresh for every measurement."""

    label = ""

    def __init__(self, template: Path):
        self.template = template
        self.process: subprocess.Popen | None = None
        self.output_dir = Path()
        self.port = 0

    def start(self, run_dir: Path, workload: Workload) -> None:
        self.port = free_port()
        self.output_dir = run_dir / "received"
        self.output_dir.mkdir(parents=True)
        self.log_path = run_dir / "receiver.log"
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self.command(run_dir, workload), env=self.environ(run_dir, workload),
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            self.wait_until_ready()
        except BaseException:
            # measure_once stops only a receiver that started, so one that never became ready is stopped here.
            self.stop()
            raise

    def command(self, run_dir: Path, workload: Workload) -> list[str]:
        raise NotImplementedError

    def environ(self, run_dir: Path, workload: Workload) -> dict[str, str]:
        return dict(os.environ)

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited at start:\n{self.log_path.read_text()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} was not ready within {START_TIMEOUT_SECONDS} seconds")

    def ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def receiving_pids(self) -> list[int]:
        """Return the processes that receive instances, for their peak memory."""
        return [self.process.pid]

    def sender_prefix(self) -> list[str]:
        """Return the command prefix that runs a sender in the receiver's network namespace (empty: the host's)."""
        return []

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stored_files(self) -> int:
        return sum(1 for path in self.output_dir.rglob("*") if path.is_file() and not path.name.startswith("."))

    def tls_files(self) -> tuple[Path, Path]:
        return self.template / "tls" / "server.pem", self.template / "tls" / "server.key"


class Storescp(Receiver):
    label = "storescp"

    def command(self, run_dir, workload):
        command = ["storescp", "-aet", "PACS", "-od", str(self.output_dir)]
        if workload.senders > 1:
            command.append("--fork")
        if workload.tls:
            cert, key = self.tls_files()
            command += ["+tls", str(key), str(cert), "-ic"]
        return [*command, str(self.port)]

    def environ(self, run_dir, workload):
        return dcmtk_environ()


class BarePynetdicom(Receiver):
    label = "bare pynetdicom"

    def command(self, run_dir, workload):
        command = [sys.executable, "-m", "benchmarks.bare_scp", str(self.port), str(self.output_dir)]
        if workload.tls:
            command += ["--tls", *map(str, self.tls_files())]
        return command


class Dicomd(Receiver):
    label = "dicomd"

    def start(self, run_dir, workload):
        self.tls_port = free_port()
        shutil.copytree(self.template, run_dir / "data")
        super().start(run_dir, workload)
        self.output_dir = run_dir / "data" / "storage"
        if workload.tls:
            self.port = self.tls_port

    def command(self, run_dir, workload):
        return [str(DICOMD), "run"]

    def environ(self, run_dir, workload):
        environ = {**os.environ, "DATA_DIR": str(run_dir / "data"), "DICOM_HOST": "127.0.0.1",
                   "DICOM_PORT": str(self.port), "DICOM_TLS_PORT": str(self.tls_port)}
        if workload.dicomd_workers:
            environ["DICOMD_WORKERS"] = str(workload.dicomd_workers)
        return environ

    def ready(self):
        return "dicomd ready" in self.log_path.read_text() and super().ready()

    def receiving_pids(self):
        # The supervisor's children are the workers and multiprocessing's resource tracker.
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]


class Orthanc(Receiver):
    """Orthanc from the Debian package, in a network namespace that has only a loopback interface.

    Orthanc 1.10 binds its DICOM and HTTP ports on every address and has no
    option to change that, so the namespace keeps both off the host's network.
    """

    label = "Orthanc"
    http_port = 8042

    @staticmethod
    def executable() -> str | None:
        # Debian installs Orthanc in /usr/sbin, which is not on every user's PATH.
        return shutil.which("Orthanc", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))

    def start(self, run_dir, workload):
        self.index_dir = run_dir / "index"
        super().start(run_dir, workload)

    def command(self, run_dir, workload):
        config_path = run_dir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(workload), indent=2))
        # unshare and sh both exec, so Orthanc keeps the pid that Popen returns. stop() therefore signals
        # Orthanc itself, and peak_rss() reads Orthanc's VmHWM.
        script = 'ip link set lo up && exec "$@"'
        return ["unshare", "--net", "--", "sh", "-c", script, "sh", self.executable(), str(config_path)]

    def config(self, workload: Workload) -> dict:
        # Everything else keeps Orthanc's defaults, among them SyncStorageArea (an fdatasync of each DICOM
        # file), the SQLite index and DicomThreadsCount (4 threads for concurrent associations).
        config = {
            "DicomAet": "PACS",
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False,
            "StorageDirectory": str(self.output_dir),
            # The index has a directory of its own so that stored_files() counts only the DICOM files.
            "IndexDirectory": str(self.index_dir),
            "StorageCompression": False,
            "Plugins": [],
            "SaveJobs": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
        }
        if workload.tls:
            cert, key = self.tls_files()
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(cert),
                "DicomTlsPrivateKey": str(key),
                # Orthanc 1.10.1 exits at start without this file, even when clients need no certificate.
                "DicomTlsTrustedCertificates": str(self.template / "tls" / "ca.pem"),
                "DicomTlsRemoteCertificateRequired": False,
            }
        return config

    def environ(self, run_dir, workload):
        # Orthanc links Debian's DCMTK, so it needs TCP_NODELAY as much as storescp does.
        return dcmtk_environ()

    def ready(self):
        if "Orthanc has started" not in self.log_path.read_text(errors="replace"):
            return False
        # The port is only reachable inside Orthanc's namespace, so the connection test runs there.
        probe = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1).close()"
        command = [*self.sender_prefix(), sys.executable, "-S", "-c", probe, str(self.port)]
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0

    def sender_prefix(self):
        return ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--"]

    @classmethod
    def missing_requirement(cls) -> str | None:
        """Return why Orthanc cannot be measured on this machine, or None if it can."""
        if cls.executable() is None:
            return "Orthanc is not measured: its executable was not found. Install the Debian package orthanc."
        # The same steps that start() and the senders take, in a namespace that exits at once.
        check = ["unshare", "--net", "--", "sh", "-c",
                 "ip link set lo up && exec nsenter --net=/proc/self/ns/net -- true"]
        try:
            result = subprocess.run(check, capture_output=True, text=True, timeout=30)
        except OSError as error:
            return f"Orthanc is not measured: unshare could not be run ({error})."
        if result.returncode != 0:
            return ("Orthanc is not measured: a network namespace for it could not be set up, which needs root, "
                    f"unshare, nsenter and ip ({result.stderr.strip() or f'exit status {result.returncode}'}).")
        return None


def peak_rss(pid: int) -> int:
    """Return the peak resident set size (VmHWM) of a running process in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def send(receiver: Receiver, workload: Workload, files: list[Path], ca_file: Path) -> float:
    """Send the workload to a running receiver; return the elapsed seconds."""
    environ = dcmtk_environ()
    prefix = receiver.sender_prefix()
    address = ["-aet", CALLING_AE_TITLE, "-aec", "PACS", "127.0.0.1", str(receiver.port)]
    tls = ["+tla", "+cf", str(ca_file)] if workload.tls else []
    started = time.perf_counter()
    if workload.echoes:
        for _ in range(workload.echoes):
            subprocess.run([*prefix, "echoscu", *address], env=environ, check=True, capture_output=True,
                           timeout=SEND_TIMEOUT_SECONDS)
        return time.perf_counter() - started

    shares = [files[index::workload.senders] for index in range(workload.senders)]
    senders = [
        subprocess.Popen([*prefix, "storescu", *tls, *address, *map(str, share)], env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for share in shares
    ]
    for sender in senders:
        output, _ = sender.communicate(timeout=SEND_TIMEOUT_SECONDS)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu to {receiver.label} failed:\n{output.decode(errors='replace')}")
    return time.perf_counter() - started


def measure_once(receiver: Receiver, workload: Workload, files: list[Path], run_dir: Path,
                 ca_file: Path, result: Measurement) -> None:
    # storescp and the bare pynetdicom SCP leave their files unsynced. The kernel writes
    # them back about 30 seconds later, during another receiver's run, where they delayed
    # each fsync: dicomd received 512 KB instances 20 % slower in that case.
    os.sync()
    receiver.start(run_dir, workload)
    try:
        elapsed = send(receiver, workload, files, ca_file)
        if workload.measure_memory:
            peak = max(peak_rss(pid) for pid in receiver.receiving_pids())
            result.peak_rss = max(result.peak_rss or 0, peak)
        stored = receiver.stored_files()
    finally:
        receiver.stop()
    if not workload.echoes and stored != len(files):
        raise RuntimeError(f"{receiver.label} stored {stored} of {len(files)} instances; see {receiver.log_path}")
    result.rates.append((workload.echoes or len(files)) / elapsed)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=os.environ.get("BENCH_DIR")) as temp:
        root = Path(temp)
        started = time.perf_counter()
        print("Generating the data sets and a dicomd data directory...", flush=True)
        (root / "data").mkdir()
        files = generate(root / "data")
        settings = prepare_dicomd_template(root / "template")
        ca_file = settings.data_dir / "tls" / "ca.pem"
        receivers = [Storescp(settings.data_dir), BarePynetdicom(settings.data_dir), Dicomd(settings.data_dir)]
        missing_orthanc = Orthanc.missing_requirement()
        if missing_orthanc:
            print(missing_orthanc, flush=True)
        else:
            receivers.append(Orthanc(settings.data_dir))

        results: dict[str, dict[str, Measurement]] = {}
        for workload in WORKLOADS:
            results[workload.name] = {receiver.label: Measurement() for receiver in receivers}
            workload_files = files.get(workload.data_set, [])
            for run in range(workload.runs):
                # The receivers take turns within a run, so a slow moment of the machine hits all of them.
                for receiver in receivers:
                    run_dir = root / "runs" / f"{len(results)}-{run}-{receiver.label.replace(' ', '-')}"
                    # The run directories are removed together at the end. On ext4 without a
                    # journal, a new file skips every inode deleted in the last 5 to 35 seconds,
                    # one by one: in one profile of dicomd that took a fifth of its CPU time.
                    measure_once(receiver, workload, workload_files, run_dir, ca_file,
                                 results[workload.name][receiver.label])
                if workload.name in FLOOR_WORKLOADS:
                    os.sync()
                    floor = results[workload.name].setdefault(FLOOR_LABEL, Measurement())
                    floor.rates.append(durable_write_rate(workload_files, root / "runs" / f"{len(results)}-{run}-floor"))
            print(f"  {workload.name}: done", flush=True)
        print(f"Finished in {time.perf_counter() - started:.0f} s.", flush=True)

    print_table(results)
    print_floor_table(results)


def print_floor_table(results: dict[str, dict[str, Measurement]]) -> None:
    print(f"\n| workload | {FLOOR_LABEL} | storescp | floor ÷ storescp | target for dicomd ÷ storescp |")
    print("| --- | ---: | ---: | ---: | --- |")
    for workload in WORKLOADS:
        if workload.name not in FLOOR_WORKLOADS:
            continue
        floor, reference = results[workload.name][FLOOR_LABEL].rate, results[workload.name]["storescp"].rate
        print(f"| {workload.name} | {floor:.1f}/s | {reference:.1f}/s | {floor / reference:.2f} | {workload.target} |")
    print(
        "\nThe floor is the rate of the file system and index work alone that a receiver does to make "
        "each instance durable before its response (benchmarks/durable_floor.py), with no network or DICOM work."
    )


def print_table(results: dict[str, dict[str, Measurement]]) -> None:
    print("\n| workload | storescp | bare pynetdicom | dicomd | Orthanc "
          "| bare ÷ storescp | dicomd ÷ storescp | dicomd ÷ Orthanc | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for workload in WORKLOADS:
        row = results[workload.name]
        values = {label: measured_value(row.get(label), workload) for label in TABLE_RECEIVERS}
        cells = [format_value(values[label], workload) for label in TABLE_RECEIVERS]
        ratios = [format_ratio(values[dividend], values[divisor]) for dividend, divisor in TABLE_RATIOS]
        if workload.measure_memory:
            met = values["dicomd"] < 128 * MIB
        else:
            minimum = float(workload.target.split()[1])
            met = values["dicomd"] / values["storescp"] >= minimum
        verdict = "met" if met else "NOT met"
        print(f"| {workload.name} | {' | '.join(cells)} | {' | '.join(ratios)} | {workload.target}: {verdict} |")
    sampling = "one run" if RUNS == 1 else f"the median of {RUNS} runs"
    print(
        f"\nRates are instances (C-ECHO: associations) per second, {sampling}; "
        "the 256 MiB row is one run and shows peak resident memory (VmHWM) of the receiving process. "
        "storescp runs with --fork for the parallel senders. – marks a receiver that was not measured."
    )


# The receivers' columns of the table, and its ratio columns as (dividend, divisor).
TABLE_RECEIVERS = ("storescp", "bare pynetdicom", "dicomd", "Orthanc")
TABLE_RATIOS = (("bare pynetdicom", "storescp"), ("dicomd", "storescp"), ("dicomd", "Orthanc"))


def measured_value(measurement: Measurement | None, workload: Workload) -> float | None:
    """Return the median rate, or the peak memory for the memory workload, or None if not measured."""
    if measurement is None:
        return None
    return measurement.peak_rss if workload.measure_memory else measurement.rate


def format_value(value: float | None, workload: Workload) -> str:
    if value is None:
        return "–"
    return f"{value / MIB:.0f} MiB" if workload.measure_memory else f"{value:.1f}/s"


def format_ratio(dividend: float | None, divisor: float | None) -> str:
    if dividend is None or divisor is None:
        return "–"
    return f"{dividend / divisor:.2f}"
