"""A listener worker process: pynetdicom servers on sockets that the supervisor bound.

The supervisor binds each listening socket once and passes it to every
worker, so several workers accept on the same port.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent
from socketserver import ThreadingMixIn

from pydicom import uid
import pydicom.config
from pynetdicom import AE, AllStoragePresentationContexts, _config, register_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
    uid_to_service_class,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicomd import configure_logging
from dicomd.balance import ACCEPT_DEFERRAL_SECONDS, AcceptBalance, WorkerLoad
from dicomd.handlers import ListenerHandlers
from dicomd.policy import Transport
from dicomd.limits import AssociationLimits
from dicomd.reactor import WakingRequestHandler
from dicomd.storage import install_receiving_file, prepare_worker_incoming
from dicomd.tls import ServerTls, describe_handshake_error, handshake
from dicomd.usage import Peer, UsageRecorder
from portal.database import make_engine
from portal.settings import Settings

log = logging.getLogger(__name__)

# Instances are stored in the transfer syntax they arrive in, never re-encoded,
# so every syntax listed here is accepted without needing a codec.
# pynetdicom accepts the first syntax of this list that the requestor proposes,
# so explicit VR comes first: it keeps each element's VR. C-GET sends a
# stored instance back in its own syntax, or decompressed when the requestor
# accepted only uncompressed syntaxes for its SOP class (dicomd/retrieve.py).
TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]

# Storage SOP classes that DICOM has retired (PS3.6 A.1) and pynetdicom (3.0)
# does not list, but that older ultrasound systems, echo carts among them, still send.
RETIRED_STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
}

# The maximum PDU length that this AE receives (pynetdicom's default is 16,382 bytes).
MAXIMUM_PDU_BYTES = 1024 * 1024

QUERY_RETRIEVE_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
]

# pynetdicom's own association limit per worker process, above dicomd's
# DICOMD_MAX_ASSOCIATIONS so that dicomd's check, which records the rejection,
# applies first. Connections that have not sent an A-ASSOCIATE-RQ yet count
# towards pynetdicom's limit but not dicomd's, hence the margin.
PYNETDICOM_LIMIT_MARGIN = 16


@dataclass
class ListenerSocket:
    """A bound, listening socket and the transport that arrives on it."""

    transport: Transport
    socket: socket.socket


@dataclass
class WorkerSpec:
    """Everything a worker process needs; it is pickled into the child."""

    number: int
    settings: Settings
    listeners: list[ListenerSocket]
    log_level: str
    pynetdicom_log_level: str
    ready: ProcessEvent
    # The association table shared by all workers; None disables the limits.
    limits: AssociationLimits | None = None
    # The open associations of every worker; None accepts without looking at the others.
    balance: AcceptBalance | None = None


class InheritedSocketServer(ThreadedAssociationServer):
    """A pynetdicom server that accepts on an already listening socket instead of binding one."""

    def __init__(self, *args, listening_socket: socket.socket, **kwargs):
        self._listening_socket = listening_socket
        # Called with the accepted socket when pynetdicom shuts it down itself; see shutdown_request().
        self.on_request_timeout = None
        # This worker's open associations among all workers'; None accepts without looking.
        self.load: WorkerLoad | None = None
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self._listening_socket
        # Every worker wakes up for a new connection but only one accepts it.
        # Non-blocking accept lets the others return to their loop at once
        # (socketserver ignores the resulting BlockingIOError) instead of
        # waiting in accept() and delaying their shutdown.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Do nothing: the supervisor already called listen()."""

    def get_request(self) -> tuple[socket.socket, tuple]:
        if self.load is not None and self.load.should_defer():
            # A less busy worker takes the connection meanwhile, and then
            # accept() raises BlockingIOError, which socketserver ignores.
            time.sleep(ACCEPT_DEFERRAL_SECONDS)
        connection, address = self.socket.accept()
        # A C-STORE response is one small segment; without TCP_NODELAY it can
        # wait for the peer's delayed ACK (about 40 ms on Linux).
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pynetdicom (3.0.4) reads a PDU with blocking recv() calls and leaves
        # an accepted socket without a timeout, so a peer that stops in the
        # middle of a PDU would hold its thread forever. With the network
        # timeout, recv() fails instead and pynetdicom closes the connection.
        # NOTE: the timeout also bounds each sendall() of one whole PDU, so a
        # peer that reads a 1 MiB PDU slower than that is disconnected too.
        connection.settimeout(self.ae.network_timeout)
        return connection, address

    def process_request(self, request: socket.socket, client_address) -> None:
        # Creating and starting the association's threads is all that
        # pynetdicom's handler does, so it runs here, in the accepting thread,
        # instead of in one more thread per connection.
        self.process_request_thread(request, client_address)

    def shutdown_request(self, request) -> None:
        # pynetdicom (3.0.4) calls this when no A-ASSOCIATE-RQ arrives within
        # the ACSE timeout, and then emits no EVT_CONN_CLOSE for the connection.
        super().shutdown_request(request)
        if self.on_request_timeout is not None:
            self.on_request_timeout(request)

    def server_close(self) -> None:
        # pynetdicom's server_close() calls shutdown() on the listening socket,
        # which would stop the other workers sharing it; closing this process's
        # copy is enough.
        self.socket.close()


class TLSSocketServer(InheritedSocketServer):
    """The TLS listener: accepts plain TCP, then runs each TLS handshake in the connection's own thread.

    pynetdicom's own TLS server wraps the socket inside its accept loop, with
    no timeout and no record of a failure, so one silent peer would stall the
    port. Here a handshake gets `tls.handshake_timeout` seconds, and a failed
    one is recorded as a rejected association.
    """

    def __init__(self, *args, tls: ServerTls, recorder: UsageRecorder, **kwargs):
        self.tls = tls
        self.recorder = recorder
        super().__init__(*args, **kwargs)

    # The handshake runs in a thread of its own for each connection, so that
    # a slow or silent peer holds up no other connection.
    process_request = ThreadingMixIn.process_request

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            tls_socket = handshake(self.tls.context, request, self.tls.handshake_timeout)
        except (ssl.SSLError, OSError) as error:
            self._record_handshake_failure(client_address, error)
            return
        # handshake() leaves the socket blocking without a timeout; see get_request().
        tls_socket.settimeout(self.ae.network_timeout)
        super().process_request_thread(tls_socket, client_address)

    def _record_handshake_failure(self, client_address, error: BaseException) -> None:
        detail = describe_handshake_error(error, self.tls.handshake_timeout, self.tls.minimum_version)
        peer = Peer(
            address=client_address[0],
            port=client_address[1],
            local_port=self.server_address[1],
            transport=Transport.TLS,
        )
        log.warning("TLS handshake from %s:%s failed: %s", peer.address, peer.port, detail)
        try:
            self.recorder.record_handshake_failure(peer, detail)
        except Exception:
            log.exception("recording the failed TLS handshake from %s:%s failed", peer.address, peer.port)


def run_worker(spec: WorkerSpec) -> None:
    """Serve associations until SIGTERM or SIGINT, then stop accepting and let open associations finish."""
    configure_logging(spec.log_level, spec.pynetdicom_log_level)
    stop_requested = threading.Event()

    def request_stop(signum, frame):
        stop_requested.set()

    reload_requested = threading.Event()

    def request_reload(signum, frame):
        reload_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)

    settings = spec.settings
    # pynetdicom writes each incoming C-STORE data set to a temporary file
    # (event.dataset_path) instead of memory. That file goes to the storage
    # volume, because /tmp may be memory-backed and instances reach hundreds of MB.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom's standard event handlers format a description of every PDU
    # and DIMSE message for its INFO and DEBUG log lines, even when those
    # lines are not logged. Above INFO they only cost time.
    if logging.getLogger("pynetdicom").getEffectiveLevel() > logging.INFO:
        _config.LOG_HANDLER_LEVEL = "none"
    # pydicom checks each value it decodes against its VR, often with a
    # regular expression, and only warns. Every DIMSE command set goes
    # through it, and dicomd acts on none of those warnings.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    install_receiving_file()
    tempfile.tempdir = str(prepare_worker_incoming(settings.storage_dir, spec.number))

    engine = make_engine(settings.database_url)
    recorder = UsageRecorder(engine)
    ae = build_ae(settings)
    tls = ServerTls(settings) if any(listener.transport is Transport.TLS for listener in spec.listeners) else None
    load = spec.balance.worker_load(spec.number) if spec.balance is not None else None
    servers = [
        start_server(ae, listener, recorder, settings, tls, limits=spec.limits, worker_number=spec.number, load=load)
        for listener in spec.listeners
    ]
    # Each association creates thousands of short-lived objects, and the
    # collections they set off walked every object the libraries hold for
    # the process's life: about 1 ms of CPU per C-ECHO association. Frozen,
    # those objects are left out of every collection.
    gc.collect()
    gc.freeze()
    log.info("worker %d ready (process %d)", spec.number, os.getpid())
    spec.ready.set()

    # Polling instead of a blocking wait, so that the signal handler never
    # runs while this thread holds the event's lock.
    while not stop_requested.is_set():
        time.sleep(0.2)
        if reload_requested.is_set():
            reload_requested.clear()
            if tls is not None:
                tls.reload()

    log.info("worker %d stopping: no new associations are accepted", spec.number)
    for server in servers:
        server.shutdown()
    finish_associations(ae, settings.dicomd_stop_grace_seconds)
    recorder.close()
    engine.dispose()
    log.info("worker %d stopped", spec.number)


def build_ae(settings: Settings) -> AE:
    """Return an AE for Verification, every storage SOP class in pynetdicom's list, query/retrieve and storage commitment."""
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.add_supported_context(Verification)
    register_retired_storage_classes()
    # Both roles are accepted for storage, because a C-GET requestor proposes
    # the SCP role for the SOP classes it retrieves.
    storage_classes = [context.abstract_syntax for context in AllStoragePresentationContexts]
    for sop_class_uid in [*storage_classes, *RETIRED_STORAGE_CLASSES]:
        ae.add_supported_context(sop_class_uid, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(StorageCommitmentPushModel)
    # The called AE title is checked by the policy, which records the rejection.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    # Larger P-DATA PDUs from the sender mean fewer PDUs for pynetdicom to
    # decode in Python, its main cost per instance. Each association keeps
    # about one PDU in memory at a time.
    ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
    # ACSE: the ARTIM timer, the wait for an A-ASSOCIATE-RQ and for a release
    # response. A silent or slow peer occupies only its own thread until then.
    ae.acse_timeout = settings.dicom_acse_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.network_timeout = settings.dicom_network_timeout
    ae.maximum_associations = settings.dicomd_max_associations + PYNETDICOM_LIMIT_MARGIN
    return ae


def register_retired_storage_classes() -> None:
    """Make pynetdicom serve C-STORE for RETIRED_STORAGE_CLASSES, once per process."""
    for sop_class_uid, keyword in RETIRED_STORAGE_CLASSES.items():
        if uid_to_service_class(sop_class_uid) is not StorageServiceClass:
            register_uid(sop_class_uid, keyword, StorageServiceClass)


def start_server(ae: AE, listener: ListenerSocket, recorder: UsageRecorder, settings: Settings,
                 tls: ServerTls | None = None, *, limits: AssociationLimits | None = None, worker_number: int = 1,
                 load: WorkerLoad | None = None):
    """Start a pynetdicom server thread accepting on `listener`; a TLS listener needs `tls`.

    With `load`, the server counts its associations there and leaves new
    connections to less busy workers first.
    """
    local_port = listener.socket.getsockname()[1]
    handlers = ListenerHandlers(
        recorder=recorder,
        own_ae_title=settings.dicom_ae_title,
        storage_dir=settings.storage_dir,
        transport=listener.transport,
        local_port=local_port,
        settings=settings,
        limits=limits,
        worker_number=worker_number,
    )
    if listener.transport is Transport.TLS:
        server_options = {"server_class": TLSSocketServer, "tls": tls, "recorder": recorder}
    else:
        server_options = {"server_class": InheritedSocketServer}
    server = ae.make_server(
        listener.socket.getsockname()[:2],
        evt_handlers=handlers.bindings(),
        listening_socket=listener.socket,
        request_handler=WakingRequestHandler,
        **server_options,
    )
    server.on_request_timeout = handlers.handle_request_timeout
    server.load = load
    # AssociationServer.shutdown() removes the server from this list, as
    # AE.start_server() would have added it.
    ae._servers.append(server)
    thread = threading.Thread(
        target=server.serve_forever, name=f"listener-{listener.transport.value}-{local_port}", daemon=True
    )
    thread.start()
    return server


def finish_associations(ae: AE, grace_seconds: float) -> None:
    """Wait for established associations to end, then abort every association still open.

    Connections that have not sent an A-ASSOCIATE-RQ yet are not waited for,
    because pynetdicom would otherwise keep them until its ACSE timeout.
    """
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(assoc.is_established for assoc in ae.active_associations):
        time.sleep(0.1)

    for association in ae.active_associations:
        if association.is_established:
            log.warning(
                "aborting the association from %s at %s:%s, still open %g seconds after the stop request",
                association.requestor.ae_title,
                association.requestor.address,
                association.requestor.port,
                grace_seconds,
            )
        association.abort()
