"""The supervisor: checks the database, binds the listening sockets and runs the worker processes.

Sockets are bound here, once, and inherited by every worker, so that a port
already in use fails the start with a clear message and any number of
workers accept on the same port. A TLS listener is one more entry in the
list of listening sockets.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent

from sqlalchemy.exc import SQLAlchemyError

from dicomd.balance import AcceptBalance
from dicomd.heartbeat import HEARTBEAT_INTERVAL_SECONDS, HeartbeatWriter
from dicomd.limits import AssociationLimits
from dicomd.listener import ListenerSocket, WorkerSpec, run_worker
from dicomd.policy import Transport
from dicomd.storage import prepare_storage_dir
from dicomd.tls import TlsConfigurationError, build_server_context
from dicomd.usage import UsageRecorder
from portal.certificates import TlsFiles, private_ca_paths, resolve_tls_files, tls_dir
from portal.database import check_schema_current, make_engine
from portal.settings import Settings

log = logging.getLogger(__name__)

# Seconds a worker gets to report that it is serving.
WORKER_READY_TIMEOUT_SECONDS = 60
# A worker that exits unexpectedly sooner than this after its start is not
# restarted, because it would most likely fail again at once.
MIN_WORKER_UPTIME_SECONDS = 10
# Seconds a worker gets to stop after SIGTERM, beyond DICOMD_STOP_GRACE_SECONDS,
# before it is killed.
WORKER_STOP_MARGIN_SECONDS = 10
LISTEN_BACKLOG = 128

# Worker processes start from a fresh interpreter: forking a process that may
# hold database connections or threads is not safe.
_spawn = multiprocessing.get_context("spawn")


class StartupError(Exception):
    """An error that stops dicomd from starting; the message names the fix."""


@dataclass
class Worker:
    number: int
    process: SpawnProcess
    ready: ProcessEvent
    started_at: float = field(default_factory=time.monotonic)


def check_database(settings: Settings) -> None:
    """Raise StartupError unless the database is reachable and at the latest revision."""
    # Alembic logs its migration context at INFO, which is noise for an operator here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = make_engine(settings.database_url)
    try:
        check_schema_current(engine)
    except SQLAlchemyError as error:
        raise StartupError(f"cannot read the database: {error}") from error
    finally:
        engine.dispose()


def prepare_storage(settings: Settings) -> None:
    try:
        prepare_storage_dir(settings.storage_dir)
    except OSError as error:
        raise StartupError(
            f"the storage directory {settings.storage_dir} is not writable: {error}; "
            "fix its permissions or set DICOM_STORAGE_DIR"
        ) from error


def prepare_tls(settings: Settings) -> TlsFiles:
    """Generate the private CA and server pair if needed and check that the TLS files load; raise StartupError if not."""
    try:
        files = resolve_tls_files(settings)
        build_server_context(settings, files)
    except TlsConfigurationError as error:
        raise StartupError(f"{error}; fix the file or unset DICOM_TLS_CERT and DICOM_TLS_KEY") from error
    except (OSError, ValueError) as error:
        raise StartupError(f"cannot prepare the TLS files in {tls_dir(settings)}: {error}") from error

    if files.generated:
        log.warning(
            "the DICOM TLS listener uses a self-signed certificate generated in %s; devices must trust its CA "
            "certificate %s (the portal offers it for download), or set DICOM_TLS_CERT and DICOM_TLS_KEY to a "
            "certificate from your own CA",
            files.cert.parent, private_ca_paths(settings)[0],
        )
    return files


def bind_listener(host: str, port: int, transport: Transport) -> ListenerSocket:
    """Bind and listen on `host`:`port`; raise StartupError when that fails."""
    port_setting = "DICOM_TLS_PORT" if transport is Transport.TLS else "DICOM_PORT"
    return ListenerSocket(transport=transport, socket=listen(host, port, f"DICOM_HOST and {port_setting}"))


def listen(host: str, port: int, settings_to_change: str) -> socket.socket:
    """Return a socket listening on `host`:`port`; raise StartupError, naming `settings_to_change`, when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except OSError as error:
        # create_server adds the address to strerror, which the message names already.
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StartupError(
            f"cannot listen on {host}:{port}: {reason}; "
            f"stop the program using that port or set {settings_to_change}"
        ) from error


class Supervisor:
    """Runs `settings.dicomd_workers` listener workers until SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, listeners: list[ListenerSocket], *, log_level: str, pynetdicom_log_level: str):
        self.settings = settings
        self.listeners = listeners
        self.log_level = log_level
        self.pynetdicom_log_level = pynetdicom_log_level
        self.workers: list[Worker] = []
        self._stop_requested = False
        self._reload_requested = False
        self.limits = AssociationLimits.create(
            _spawn,
            maximum=settings.dicomd_max_associations,
            maximum_per_identity=settings.dicomd_max_associations_per_identity,
            workers=settings.dicomd_workers,
        )
        self.balance = AcceptBalance.create(_spawn, settings.dicomd_workers)
        self._engine = make_engine(settings.database_url)
        self.heartbeat = HeartbeatWriter(
            self._engine,
            settings.node_name,
            [(settings.dicom_host, listener.socket.getsockname()[1], listener.transport.value) for listener in listeners],
        )
        self._next_heartbeat = 0.0

    def run(self) -> int:
        """Start the workers, restart any that fail, and stop them all on a signal; return the exit code."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)

        for number in range(1, self.settings.dicomd_workers + 1):
            self.workers.append(self._start_worker(number))
        if not self._wait_until_ready():
            self._stop_workers()
            return 1
        log.info(
            "dicomd ready: %s, called AE title %s, %d worker(s), storage %s",
            ", ".join(self._describe(listener) for listener in self.listeners),
            self.settings.dicom_ae_title,
            len(self.workers),
            self.settings.storage_dir,
        )

        exit_code = self._watch_workers()
        log.info("dicomd stopping")
        self._stop_workers()
        for listener in self.listeners:
            listener.socket.close()
        self.heartbeat.beat("down", "dicomd stopped")
        self._engine.dispose()
        log.info("dicomd stopped")
        return exit_code

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _request_reload(self, signum, frame) -> None:
        self._reload_requested = True

    def _forward_reload(self) -> None:
        """Pass SIGHUP on to every worker, which loads the TLS certificate files again."""
        self._reload_requested = False
        log.info("SIGHUP received: workers reload the TLS certificate files")
        for worker in self.workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGHUP)

    def _start_worker(self, number: int) -> Worker:
        ready = _spawn.Event()
        spec = WorkerSpec(
            number=number,
            settings=self.settings,
            listeners=self.listeners,
            log_level=self.log_level,
            pynetdicom_log_level=self.pynetdicom_log_level,
            ready=ready,
            limits=self.limits,
            balance=self.balance,
        )
        process = _spawn.Process(target=run_worker, args=(spec,), name=f"dicomd-worker-{number}")
        process.start()
        return Worker(number=number, process=process, ready=ready)

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        for worker in self.workers:
            while not worker.ready.wait(0.2):
                if self._stop_requested:
                    return False
                if not worker.process.is_alive():
                    log.error("worker %d exited with status %s before it was ready", worker.number, worker.process.exitcode)
                    return False
                if time.monotonic() > deadline:
                    log.error("worker %d was not ready within %d seconds", worker.number, WORKER_READY_TIMEOUT_SECONDS)
                    return False
        return True

    def _watch_workers(self) -> int:
        """Restart workers that exit unexpectedly until a stop is requested; return the exit code."""
        while not self._stop_requested:
            time.sleep(0.2)
            self._beat_if_due()
            if self._reload_requested:
                self._forward_reload()
            for index, worker in enumerate(self.workers):
                if worker.process.is_alive() or self._stop_requested:
                    continue
                uptime = time.monotonic() - worker.started_at
                log.error("worker %d exited unexpectedly with status %s", worker.number, worker.process.exitcode)
                if uptime < MIN_WORKER_UPTIME_SECONDS:
                    log.error("worker %d failed %.1f seconds after its start; stopping dicomd", worker.number, uptime)
                    return 1
                self._close_lost_associations(worker)
                log.info("restarting worker %d", worker.number)
                self.workers[index] = self._start_worker(worker.number)
        return 0

    def _close_lost_associations(self, worker: Worker) -> None:
        """Free the dead worker's association slots and its count of them, and record its open associations as aborted."""
        self.balance.clear(worker.number)
        association_ids = self.limits.clear_worker(worker.number)
        if not association_ids:
            return
        detail = f"worker {worker.number} exited unexpectedly with status {worker.process.exitcode}"
        log.warning("%s; recording its %d open association(s) as aborted: %s",
                    detail, len(association_ids), association_ids)
        try:
            UsageRecorder(self._engine).record_lost(association_ids, detail)
        except SQLAlchemyError:
            log.exception("recording the associations of worker %d as aborted failed", worker.number)

    def _beat_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_INTERVAL_SECONDS
        alive = sum(worker.process.is_alive() for worker in self.workers)
        if alive == len(self.workers):
            self.heartbeat.beat("up")
        else:
            self.heartbeat.beat("up", f"{alive} of {len(self.workers)} workers running")

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()

        stop_seconds = self.settings.dicomd_stop_grace_seconds + WORKER_STOP_MARGIN_SECONDS
        deadline = time.monotonic() + stop_seconds
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("worker %d did not stop within %g seconds; killing it", worker.number, stop_seconds)
                worker.process.kill()
                worker.process.join()

    @staticmethod
    def _describe(listener: ListenerSocket) -> str:
        host, port = listener.socket.getsockname()[:2]
        return f"{listener.transport.value} DICOM on {host}:{port}"
