"""pynetdicom event handlers: one `handle_<event>` per event a listener binds.

Handlers catch their own failures. Each failure is logged once with the
association id, calling AE title and peer address, and a DIMSE request gets
one of the named statuses below.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import evt
from pynetdicom.events import Event

from dicomd import policy
from dicomd.policy import IdentityPolicy, Transport
from dicomd.storage import InvalidDataset, SOPClassMismatch, StorageFailed, store_instance
from dicomd.tls import TlsSession, session_of
from dicomd.usage import Peer, UsageRecorder

log = logging.getLogger(__name__)

# DIMSE status values returned by the handlers. General statuses are from
# PS3.7 Annex C, Storage statuses from PS3.4 B.2.3 (as pynetdicom 3.0's
# `pynetdicom.status` tables list them).
# Success.
STATUS_SUCCESS = 0x0000
# Refused: Not Authorized. The association stays usable for other requests.
STATUS_NOT_AUTHORIZED = 0x0124
# Failure: Processing Failure, for an unexpected internal error.
STATUS_PROCESSING_FAILURE = 0x0110
# Storage, Refused: Out of Resources. The device should send the instance again later.
STATUS_OUT_OF_RESOURCES = 0xA700
# Storage, Error: Data Set does not match SOP Class.
STATUS_DATASET_MISMATCH = 0xA900
# Storage, Error: Cannot understand (the range is 0xC000 to 0xCFFF).
STATUS_CANNOT_UNDERSTAND = 0xC000

# A-ASSOCIATE-RJ sent when the policy cannot be evaluated (the database is
# unreachable): rejected-transient, service-user, no reason given,
# so the device retries later.
TRANSIENT_REJECTION = (0x02, 0x01, 0x01)

REASON_OPERATION_NOT_PERMITTED = "operation_not_permitted"
REASON_INVALID_DATASET = "invalid_dataset"
REASON_STORAGE_FAILED = "storage_failed"


@dataclass
class AssociationState:
    """The per-association state of an accepted association: its record id, identity and counts."""

    record_id: int
    calling_ae_title: str
    peer: Peer
    identity: IdentityPolicy
    operations: Counter = field(default_factory=Counter)
    aborted: bool = False

    def __str__(self) -> str:
        return f"association {self.record_id} from {self.calling_ae_title} at {_address(self.peer)}"


# Seconds to wait after a closed connection for pynetdicom's abort or release event.
CONN_CLOSE_SETTLE_SECONDS = 1.0


class ListenerHandlers:
    """The event handlers of one listener, with the state they share across associations."""

    def __init__(
        self,
        *,
        recorder: UsageRecorder,
        own_ae_title: str,
        storage_dir: Path,
        transport: Transport,
        local_port: int,
    ):
        self.recorder = recorder
        self.own_ae_title = own_ae_title
        self.storage_dir = storage_dir
        self.transport = transport
        self.local_port = local_port
        self._states: dict[object, AssociationState] = {}
        self._lock = threading.Lock()

    def bindings(self) -> list[tuple]:
        """Return the `evt_handlers` list for `AE.make_server`."""
        return [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
        ]

    def handle_requested(self, event: Event) -> None:
        """Apply the association policy; reject by sending A-ASSOCIATE-RJ from here.

        pynetdicom (3.0) does not emit EVT_REJECTED for a rejection sent from
        this handler, so the rejection is recorded here.
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = (request.calling_ae_title or "").strip(" ")
        called = (request.called_ae_title or "").strip(" ")
        peer = Peer(
            address=assoc.requestor.address,
            port=assoc.requestor.port,
            local_port=self.local_port,
            transport=self.transport,
            tls=tls_session_of(assoc) if self.transport is Transport.TLS else None,
        )
        presented = peer.tls.client_certificate_fingerprint if peer.tls else None

        try:
            identity = self.recorder.load_identity(calling)
            rejection = policy.decide_association(
                calling_ae_title=calling,
                called_ae_title=called,
                own_ae_title=self.own_ae_title,
                identity=identity,
                transport=self.transport,
                peer_address=peer.address,
                client_certificate_fingerprint=presented,
                certificate_owner_id=self.recorder.find_certificate_owner(presented),
            )
            record_id = self.recorder.record_request(
                calling_ae_title=calling,
                called_ae_title=called,
                peer=peer,
                identity=identity,
                rejection=rejection,
            )
        except Exception:
            log.exception(
                "association from %s at %s to %s: the policy could not be evaluated; rejecting it as transient",
                calling, _address(peer), called,
            )
            assoc.acse.send_reject(*TRANSIENT_REJECTION)
            assoc.kill()
            return

        if rejection is not None:
            log.info(
                "association %s from %s at %s to %s rejected: %s",
                record_id, calling, _address(peer), called, rejection.reason.value,
            )
            assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
            assoc.kill()
            return

        state = AssociationState(record_id=record_id, calling_ae_title=calling, peer=peer, identity=identity)
        with self._lock:
            self._states[assoc] = state
        log.info("%s to %s accepted (%s)", state, called, _describe_transport(peer))

    def handle_rejected(self, event: Event) -> None:
        """Log rejections that pynetdicom sends itself, such as its association limit."""
        log.warning(
            "association from %s at %s rejected by pynetdicom (for example, its limit of simultaneous associations)",
            event.assoc.requestor.ae_title, _address_of(event.assoc),
        )

    def handle_echo(self, event: Event) -> int:
        """Return the C-ECHO status: success if the identity may send C-ECHO, else not authorized."""
        state = self._state(event)
        if state is None:
            return STATUS_PROCESSING_FAILURE

        if not policy.is_operation_permitted(state.identity, "echo"):
            return self._refuse(state, "echo")

        state.operations["echo"] += 1
        return STATUS_SUCCESS

    def handle_store(self, event: Event) -> int:
        """Store a C-STORE data set durably and index it, then return the status to send.

        Returns STATUS_SUCCESS (also for a duplicate), STATUS_NOT_AUTHORIZED,
        STATUS_CANNOT_UNDERSTAND or STATUS_DATASET_MISMATCH for a data set
        that cannot be stored, STATUS_OUT_OF_RESOURCES when writing or
        indexing fails, and STATUS_PROCESSING_FAILURE on an unexpected error.
        """
        state = self._state(event)
        if state is None:
            return STATUS_PROCESSING_FAILURE

        if not policy.is_operation_permitted(state.identity, "store"):
            return self._refuse(state, "store")

        request = event.request
        try:
            stored = store_instance(
                event.dataset_path,
                self.storage_dir,
                expected_sop_class_uid=str(request.AffectedSOPClassUID),
                expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
            )
        except SOPClassMismatch as error:
            return self._fail(state, "store_invalid", REASON_INVALID_DATASET, error, STATUS_DATASET_MISMATCH)
        except InvalidDataset as error:
            return self._fail(state, "store_invalid", REASON_INVALID_DATASET, error, STATUS_CANNOT_UNDERSTAND)
        except StorageFailed as error:
            return self._fail(state, "store_failed", REASON_STORAGE_FAILED, error, STATUS_OUT_OF_RESOURCES)
        except Exception:
            log.exception("%s: storing SOP instance %s failed unexpectedly", state, request.AffectedSOPInstanceUID)
            state.operations["store_failed"] += 1
            return STATUS_PROCESSING_FAILURE

        try:
            self.recorder.record_instance(
                association_id=state.record_id,
                identity_id=state.identity.identity_id,
                stored=stored,
            )
        except Exception:
            # The file is durable but not indexed. A failure status makes the
            # device send it again, and the duplicate then gets indexed.
            log.exception("%s: indexing %s failed", state, stored.relative_path)
            state.operations["store_failed"] += 1
            return STATUS_OUT_OF_RESOURCES

        state.operations["store"] += 1
        if stored.duplicate:
            state.operations["store_duplicate"] += 1
        log.info(
            "%s: stored %s (%d bytes, transfer syntax %s%s)",
            state, stored.relative_path, stored.size_bytes, stored.header.transfer_syntax_uid,
            ", duplicate kept" if stored.duplicate else "",
        )
        return STATUS_SUCCESS

    def handle_released(self, event: Event) -> None:
        self._finish(event, aborted=False)

    def handle_aborted(self, event: Event) -> None:
        self._finish(event, aborted=True)

    def handle_conn_close(self, event: Event) -> None:
        """Close the record of an association that ended without a release or an abort.

        pynetdicom reports the closed connection from its network thread, and a
        received A-ABORT from the association's own thread, in either order. So
        the record is closed here only if no abort or release arrives soon after.
        """
        timer = threading.Timer(CONN_CLOSE_SETTLE_SECONDS, self._finish, args=(event,), kwargs={"aborted": False})
        timer.daemon = True
        timer.start()

    def _finish(self, event: Event, *, aborted: bool) -> None:
        with self._lock:
            state = self._states.pop(event.assoc, None)
        if state is None:
            return

        operations = dict(state.operations)
        log.info("%s %s: %s", state, "aborted" if aborted else "ended", operations or "no requests")
        try:
            self.recorder.record_end(state.record_id, operations=operations, aborted=aborted)
        except Exception:
            log.exception("%s: recording the end of the association failed", state)

    def _state(self, event: Event) -> AssociationState | None:
        with self._lock:
            state = self._states.get(event.assoc)
        if state is None:
            log.error("a request arrived from %s on an association with no record", _address_of(event.assoc))
        return state

    def _refuse(self, state: AssociationState, operation: str) -> int:
        log.warning("%s: %s is not permitted for this identity", state, operation)
        state.operations[f"{operation}_not_permitted"] += 1
        self._record_failure(state, REASON_OPERATION_NOT_PERMITTED, f"{REASON_OPERATION_NOT_PERMITTED}: {operation}")
        return STATUS_NOT_AUTHORIZED

    def _fail(self, state: AssociationState, counter: str, reason: str, error: Exception, status: int) -> int:
        log.warning("%s: %s: %s", state, reason, error)
        state.operations[counter] += 1
        self._record_failure(state, reason, f"{reason}: {error}")
        return status

    def _record_failure(self, state: AssociationState, reason: str, detail: str) -> None:
        try:
            self.recorder.record_failure(state.record_id, reason, detail)
        except Exception:
            log.exception("%s: recording %s failed", state, reason)


def tls_session_of(assoc) -> TlsSession | None:
    """Return what the TLS handshake of `assoc`'s connection negotiated, or None if it is not a TLS socket."""
    connection = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if not isinstance(connection, ssl.SSLSocket):
        return None
    return session_of(connection)


def _describe_transport(peer: Peer) -> str:
    if peer.tls is None:
        return peer.transport.value
    return f"{peer.tls.version}, {peer.tls.cipher}, client certificate {peer.tls.client_certificate_subject}"


def _address(peer: Peer) -> str:
    return f"{peer.address}:{peer.port}"


def _address_of(assoc) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"
