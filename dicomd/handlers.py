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
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.status import STATUS_FAILURE, STORAGE_SERVICE_CLASS_STATUS
from sqlalchemy.orm import Session

from dicomd import commitment, policy, query, retrieve
from dicomd.group_commit import IndexNotFlushed
from dicomd.limits import AssociationLimits, LimitExceeded
from dicomd.policy import IdentityPolicy, RejectReason, Rejection, Transport
from dicomd.reactor import WakingDUL
from dicomd.storage import (
    InvalidDataset,
    ReceivedFile,
    SOPClassMismatch,
    StorageFailed,
    remove_instance,
    store_instance,
    take_receive_failure,
)
from dicomd.tls import TlsSession, session_of
from dicomd.usage import Peer, UsageRecorder
from portal.models import utcnow

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
# Query/Retrieve statuses, PS3.4 C.4.1.1.4, C.4.2.1.5 and C.4.3.1.4.
# Pending: a C-FIND match follows, or a C-GET or C-MOVE sub-operation is next.
STATUS_PENDING = 0xFF00
# Cancel: a C-CANCEL request stopped the matches or sub-operations.
STATUS_CANCEL = 0xFE00
# Failure: Identifier does not match SOP Class (a missing or invalid level or unique key).
STATUS_IDENTIFIER_MISMATCH = 0xA900
# C-MOVE Failure: Refused: Move Destination unknown.
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
# C-GET and C-MOVE Failure: Refused: Out of Resources, unable to perform sub-operations.
STATUS_SUB_OPERATIONS_REFUSED = 0xA702
# Failure: Unable to process (C-FIND 0xC000 to 0xCFFF).
STATUS_UNABLE_TO_PROCESS = 0xC001
# N-ACTION failures of PS3.7 Annex C: Missing Attribute, and No Such Action.
STATUS_MISSING_ATTRIBUTE = 0x0120
STATUS_NO_SUCH_ACTION = 0x0123

# A-ASSOCIATE-RJ sent when the policy cannot be evaluated (the database is
# unreachable): rejected-transient, service-user, no reason given,
# so the device retries later.
TRANSIENT_REJECTION = (0x02, 0x01, 0x01)
# A-ASSOCIATE-RJ for an association over dicomd's limits: rejected-transient,
# service-provider (presentation related function), reason 2, local-limit-exceeded (PS3.8 9.3.4).
LOCAL_LIMIT_REJECTION = (0x02, 0x03, 0x02)

REASON_OPERATION_NOT_PERMITTED = "operation_not_permitted"
REASON_INVALID_DATASET = "invalid_dataset"
REASON_STORAGE_FAILED = "storage_failed"
REASON_TRANSFER_INTERRUPTED = "transfer_interrupted"
REASON_NO_PRESENTATION_CONTEXT = "no_presentation_context"
REASON_ABORTED_BEFORE_REQUESTS = "aborted_before_requests"
REASON_MOVE_DESTINATION_UNKNOWN = "move_destination_unknown"
REASON_MOVE_DESTINATION_FAILED = "move_destination_failed"
REASON_INVALID_IDENTIFIER = "invalid_identifier"
REASON_SUB_OPERATIONS_FAILED = "sub_operations_failed"

# Error Comment (0000,0902) is LO: at most 64 characters of the default repertoire, without backslashes.
ERROR_COMMENT_MAX_CHARS = 64
# The distinct causes of failed sub-operations that one association detail line lists.
MAX_LISTED_FAILURE_CAUSES = 3

# Query/Retrieve information models by SOP Class UID (PS3.4 C.6).
QR_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",
}

# Seconds to wait for the N-ACTION response to go out before sending the
# storage commitment report on the same association.
COMMITMENT_RESPONSE_WAIT_SECONDS = 10
# Seconds between the N-ACTION response and a report on the same association.
# A device that releases the association right after the response would
# otherwise often get the report while it releases, which some devices,
# pynetdicom 3.0 among them, fail on. A release in this time sends the
# report over a new association.
COMMITMENT_REPORT_DELAY_SECONDS = 0.5

# The maximum number of P-DATA primitives waiting to be sent when handle_find builds
# its next pending response. A response is at least two primitives (command and data set).
MAX_QUEUED_RESPONSE_PRIMITIVES = 4


@dataclass
class AssociationState:
    """The per-association state of an accepted association: its record id, identity and counts."""

    record_id: int
    calling_ae_title: str
    peer: Peer
    identity: IdentityPolicy
    operations: Counter = field(default_factory=Counter)
    aborted: bool = False
    # Whether a reason was recorded on the association's row.
    failure_recorded: bool = False
    # The slot this association occupies in the shared association table, if any.
    limit_slot: int | None = None

    def __str__(self) -> str:
        return f"association {self.record_id} from {self.calling_ae_title} at {_address(self.peer)}"


# The largest PDU accepted from a peer. dicomd announces a maximum P-DATA PDU
# length of 1 MiB (MAXIMUM_PDU_BYTES in dicomd.listener), and this bound leaves
# room for peers that exceed it and for large A-ASSOCIATE-RQ PDUs.
# pynetdicom 3.0 keeps reading up to any declared length, so a larger declared
# length closes the connection before memory grows with it.
MAX_RECEIVED_PDU_BYTES = 4 * 1024 * 1024


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
        settings=None,
        limits: AssociationLimits | None = None,
        worker_number: int = 1,
    ):
        # Settings are needed for outgoing TLS associations only.
        self.settings = settings
        self.recorder = recorder
        self.own_ae_title = own_ae_title
        self.storage_dir = storage_dir
        self.transport = transport
        self.local_port = local_port
        self.limits = limits
        self.worker_number = worker_number
        self._states: dict[object, AssociationState] = {}
        # Connections whose A-ASSOCIATE-RQ has not reached handle_requested
        # yet, with their peer and open time; one entry per open connection.
        self._connections: dict[object, tuple[Peer, object]] = {}
        self._lock = threading.Lock()

    def bindings(self) -> list[tuple]:
        """Return the `evt_handlers` list for `AE.make_server`."""
        return [
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_FIND, self.handle_find),
            (evt.EVT_C_GET, self.handle_get),
            (evt.EVT_C_MOVE, self.handle_move),
            (evt.EVT_N_ACTION, self.handle_n_action),
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
        with self._lock:
            self._connections.pop(assoc, None)
        request = assoc.requestor.primitive
        calling = (request.calling_ae_title or "").strip(" ")
        called = (request.called_ae_title or "").strip(" ")
        peer = self._peer_of(assoc)
        presented = peer.tls.client_certificate_fingerprint if peer.tls else None

        limit_slot = None
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
            if rejection is None:
                limit_slot, rejection = self._reserve_slot(identity)
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
            if limit_slot is not None:
                self.limits.release(limit_slot)
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

        state = AssociationState(record_id=record_id, calling_ae_title=calling, peer=peer, identity=identity,
                                 limit_slot=limit_slot)
        if limit_slot is not None:
            self.limits.attach_record(limit_slot, record_id)
        with self._lock:
            self._states[assoc] = state
        if isinstance(assoc.dul, WakingDUL) and _config.LOG_HANDLER_LEVEL == "none":
            # With pynetdicom's log handlers on, requests take its path so that they are logged.
            assoc.dul.receive_requests_directly(
                lambda context, command, received: self.store_received(
                    state, command.sop_class_uid, command.sop_instance_uid, received,
                ),
                lambda: self.echo_received(state),
                on_interrupted=lambda sop_instance_uid, received_bytes, cause: self._record_failure(
                    state, REASON_TRANSFER_INTERRUPTED,
                    f"{REASON_TRANSFER_INTERRUPTED}: SOP instance {sop_instance_uid} after {received_bytes} bytes "
                    f"of its data set: {cause}",
                ),
                description=str(state),
            )
        log.info("%s to %s accepted (%s)", state, called, _describe_transport(peer))

    def handle_accepted(self, event: Event) -> None:
        """Record an association on which dicomd accepted none of the proposed presentation contexts.

        pynetdicom accepts such an association, but the device can send no
        request on it and usually aborts, which would leave the connection
        log without a reason.
        """
        assoc = event.assoc
        if assoc.accepted_contexts or not assoc.rejected_contexts:
            return
        state = self._state(event)
        if state is None:
            return
        rejected = ", ".join(
            f"{context.abstract_syntax} ({context.status.lower()})" for context in assoc.rejected_contexts
        )
        log.warning("%s: no proposed presentation context was accepted: %s", state, rejected)
        self._record_failure(
            state, REASON_NO_PRESENTATION_CONTEXT,
            f"{REASON_NO_PRESENTATION_CONTEXT}: no proposed presentation context was accepted: {rejected}",
        )

    def handle_rejected(self, event: Event) -> None:
        """Log rejections that pynetdicom sends itself, such as its association limit."""
        log.warning(
            "association from %s at %s rejected by pynetdicom (for example, its limit of simultaneous associations)",
            event.assoc.requestor.ae_title, _address_of(event.assoc),
        )

    def handle_conn_open(self, event: Event) -> None:
        """Note a new connection, so that one which ends before a decodable A-ASSOCIATE-RQ is still recorded."""
        assoc = event.assoc
        peer = self._peer_of(assoc)
        watch = ConnectionWatch(assoc)
        with self._lock:
            self._connections[assoc] = (peer, utcnow(), watch)

    def handle_echo(self, event: Event) -> int:
        """Return the C-ECHO status: success if the identity may send C-ECHO, else not authorized."""
        state = self._state(event)
        if state is None:
            return STATUS_PROCESSING_FAILURE
        return self.echo_received(state)

    def echo_received(self, state: AssociationState) -> int:
        """Return the status for a C-ECHO request on the association of `state`; see handle_echo."""
        if not self._permits(state, "echo"):
            return self._refuse(state, "echo")

        state.operations["echo"] += 1
        return STATUS_SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        """Store a C-STORE data set durably and index it, then return the status to send.

        Returns STATUS_SUCCESS (also for a duplicate), STATUS_NOT_AUTHORIZED,
        STATUS_CANNOT_UNDERSTAND or STATUS_DATASET_MISMATCH for a data set
        that cannot be stored, STATUS_OUT_OF_RESOURCES when writing or
        indexing fails, and STATUS_PROCESSING_FAILURE on an unexpected error.
        A failure status is a status data set with an Error Comment.
        """
        state = self._state(event)
        if state is None:
            return STATUS_PROCESSING_FAILURE
        request = event.request
        return self.store_received(
            state, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), event.dataset_path,
        )

    def store_received(self, state: AssociationState, sop_class_uid: str, sop_instance_uid: str,
                       received: Path | ReceivedFile) -> int | Dataset:
        """Store the received Part 10 file for a C-STORE request; see handle_store.

        A failure status comes with the error as Error Comment, so that the
        device's log shows the cause; the connection log records the same error.
        """
        if not self._permits(state, "store"):
            return _status_with_error_comment(self._refuse(state, "store"), "C-STORE is not permitted for this AE title")

        receive_failure = take_receive_failure(received.path if isinstance(received, ReceivedFile) else received)
        if receive_failure is not None:
            error = StorageFailed(f"receiving the data set failed: {receive_failure}")
            return self._store_failure(state, sop_instance_uid, REASON_STORAGE_FAILED, error, STATUS_OUT_OF_RESOURCES)
        try:
            stored = store_instance(
                received,
                self.storage_dir,
                expected_sop_class_uid=sop_class_uid,
                expected_sop_instance_uid=sop_instance_uid,
            )
        except SOPClassMismatch as error:
            return self._store_failure(state, sop_instance_uid, REASON_INVALID_DATASET, error, STATUS_DATASET_MISMATCH)
        except InvalidDataset as error:
            return self._store_failure(state, sop_instance_uid, REASON_INVALID_DATASET, error, STATUS_CANNOT_UNDERSTAND)
        except StorageFailed as error:
            return self._store_failure(state, sop_instance_uid, REASON_STORAGE_FAILED, error, STATUS_OUT_OF_RESOURCES)
        except Exception:
            log.exception("%s: storing SOP instance %s failed unexpectedly", state, sop_instance_uid)
            state.operations["store_failed"] += 1
            return _status_with_error_comment(STATUS_PROCESSING_FAILURE, "storing the instance failed unexpectedly")

        try:
            self.recorder.record_instance(
                association_id=state.record_id,
                identity_id=state.identity.identity_id,
                stored=stored,
            )
        except Exception as error:
            # An instance is acknowledged only with its index rows. The file
            # this request placed is removed again, and the failure status
            # makes the device send it later. A file that was already there
            # (a duplicate) is kept, because another request may have indexed
            # it, and so is one whose rows were committed but not flushed.
            log.exception("%s: indexing %s failed", state, stored.relative_path)
            state.operations["store_failed"] += 1
            # NOTE: another association may store the same instance at this
            # moment, find this file, index it as a duplicate and acknowledge
            # it. Its acknowledged copy is then removed here.
            if not stored.duplicate and not isinstance(error, IndexNotFlushed):
                self._remove_unindexed(state, stored.relative_path)
            return _status_with_error_comment(STATUS_OUT_OF_RESOURCES, "indexing the instance failed; send it again")

        state.operations["store"] += 1
        if stored.duplicate:
            state.operations["store_duplicate"] += 1
        log.info(
            "%s: stored %s (%d bytes, transfer syntax %s%s)",
            state, stored.relative_path, stored.size_bytes, stored.header.transfer_syntax_uid,
            ", duplicate kept" if stored.duplicate else "",
        )
        return STATUS_SUCCESS

    def handle_find(self, event: Event):
        """Yield a pending response per matching record, then pynetdicom sends the final status.

        Yields STATUS_NOT_AUTHORIZED, STATUS_IDENTIFIER_MISMATCH for an
        invalid level, STATUS_UNABLE_TO_PROCESS when the index cannot be
        read, or STATUS_CANCEL after a C-CANCEL request.
        """
        state = self._state(event)
        if state is None:
            yield STATUS_PROCESSING_FAILURE, None
            return
        if not self._permits(state, "find"):
            yield self._refuse(state, "find"), None
            return

        model = QR_MODELS.get(str(event.request.AffectedSOPClassUID), "STUDY")
        try:
            find_query = query.parse_identifier(event.identifier, model)
            with Session(self.recorder.engine) as session:
                records = query.find_records(session, find_query)
        except query.InvalidQuery as error:
            yield self._reject_identifier(state, "find", error), None
            return
        except Exception:
            log.exception("%s: C-FIND failed", state)
            state.operations["find_failed"] += 1
            yield STATUS_UNABLE_TO_PROCESS, None
            return

        state.operations["find"] += 1
        log.info("%s: C-FIND at %s level matched %d records", state, find_query.level, len(records))
        for record in records:
            # Waiting for the queued responses to go out first keeps the
            # handler close to what the peer has received, so a C-CANCEL
            # stops the matches after a few more responses instead of all.
            event.assoc.dul.wait_for_send_queue(MAX_QUEUED_RESPONSE_PRIMITIVES)
            if event.is_cancelled:
                log.info("%s: C-FIND cancelled by the peer", state)
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, query.response_identifier(find_query, record, self.own_ae_title)

    def handle_get(self, event: Event):
        """Yield the number of instances, then one pending (status, data set) per C-STORE sub-operation.

        pynetdicom sends each file over this association and keeps the
        remaining, completed, failed and warning counts of the responses.
        """
        state = self._state(event)
        if state is None:
            yield _end_get_without_sub_operations(event)
            yield STATUS_PROCESSING_FAILURE, None
            return
        if not self._permits(state, "get"):
            yield _end_get_without_sub_operations(event)
            yield self._refuse(state, "get"), None
            return

        items, status = self._retrieve_items(state, event, "get")
        if status is not None:
            yield _end_get_without_sub_operations(event)
            yield status, None
            return

        state.operations["get"] += 1
        log.info("%s: C-GET of %d instances", state, len(items))
        if items:
            failures = SubOperationFailures()
            failures.watch(event.assoc)

            def end_get(response) -> None:
                failures.stop_watching(event.assoc)
                self._record_failed_sub_operations(state, "get", "C-GET", response, len(items), failures)

            _change_final_response(event, end_get)
        yield from self._sub_operations(state, event, "get", items)

    def handle_move(self, event: Event):
        """Yield the destination's address, the number of instances, then one (status, data set) per sub-operation.

        The destination is the enabled identity whose AE title is the Move
        Destination and which has a retrieve address; any other gets
        STATUS_MOVE_DESTINATION_UNKNOWN. When the association with the
        destination fails, the final status is STATUS_SUB_OPERATIONS_REFUSED.
        """
        state = self._state(event)
        if state is None:
            yield _final_move_status(event, STATUS_PROCESSING_FAILURE)
            return
        if not self._permits(state, "move"):
            yield _final_move_status(event, self._refuse(state, "move"))
            return

        destination_title = str(event.move_destination or "").strip(" \0")
        try:
            destination = self.recorder.load_remote_ae(destination_title)
        except Exception:
            log.exception("%s: looking up the move destination %r failed", state, destination_title)
            state.operations["move_failed"] += 1
            yield _final_move_status(event, STATUS_PROCESSING_FAILURE)
            return
        if destination is None:
            detail = f"{destination_title!r} is not an enabled identity with a retrieve address"
            self._fail(state, "move_unknown_destination", REASON_MOVE_DESTINATION_UNKNOWN,
                       ValueError(detail), STATUS_MOVE_DESTINATION_UNKNOWN)
            # For an unknown address, pynetdicom sends status 0xA801.
            yield None, None
            return

        items, status = self._retrieve_items(state, event, "move")
        tls_errors: list[OSError] = []
        failures = SubOperationFailures()
        if status is None:
            try:
                options = {
                    **retrieve.association_options(destination, self.settings, tls_errors=tls_errors),
                    "contexts": retrieve.presentation_contexts(items) if items else None,
                    # pynetdicom opens the association with the destination itself, so
                    # EVT_ESTABLISHED is where dicomd reaches it before the first sub-operation.
                    "evt_handlers": [(evt.EVT_ESTABLISHED, lambda established: failures.watch(established.assoc))],
                }
            except Exception:
                log.exception("%s: preparing the association to %s failed", state, destination.ae_title)
                state.operations["move_failed"] += 1
                status = STATUS_UNABLE_TO_PROCESS
        if status is not None:
            yield _final_move_status(event, status)
            return

        state.operations["move"] += 1
        log.info("%s: C-MOVE of %d instances to %s at %s:%s%s", state, len(items), destination.ae_title,
                 destination.host, destination.port, " over TLS" if destination.use_tls else "")
        if items:
            # pynetdicom opens the association only when there is an instance to send.
            self._end_move(state, event, destination, items, tls_errors, failures)
        yield destination.host, destination.port, options
        yield from self._sub_operations(state, event, "move", items)

    def handle_n_action(self, event: Event):
        """Check a storage commitment request, return its N-ACTION status and send the N-EVENT-REPORT.

        The report goes over this association once the N-ACTION response is
        sent, or over a new association to the identity's retrieve address
        when this one has ended.
        """
        state = self._state(event)
        if state is None:
            return STATUS_PROCESSING_FAILURE, None
        if not self._permits(state, "commit"):
            return self._refuse(state, "commit"), None
        if event.action_type != commitment.ACTION_REQUEST_COMMITMENT:
            state.operations["commit_invalid"] += 1
            return STATUS_NO_SUCH_ACTION, None

        try:
            with Session(self.recorder.engine) as session:
                result = commitment.check_commitment(session, self.storage_dir, event.action_information)
        except commitment.InvalidCommitmentRequest as error:
            log.warning("%s: storage commitment request is invalid: %s", state, error)
            state.operations["commit_invalid"] += 1
            return STATUS_MISSING_ATTRIBUTE, None
        except Exception:
            log.exception("%s: checking a storage commitment request failed", state)
            state.operations["commit_failed"] += 1
            return STATUS_PROCESSING_FAILURE, None

        state.operations["commit"] += 1
        log.info("%s: storage commitment %s: %d committed, %d failed", state,
                 result.information.TransactionUID, result.committed, result.failed)
        self._start_commitment_report(event, state, result)
        return STATUS_SUCCESS, None

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
        with self._lock:
            finished = event.assoc not in self._states and event.assoc not in self._connections
        if finished:
            # Released or aborted already: a timer thread for each association would only find nothing to do.
            return
        timer = threading.Timer(CONN_CLOSE_SETTLE_SECONDS, self._finish, args=(event,), kwargs={"aborted": False})
        timer.daemon = True
        timer.start()

    def handle_request_timeout(self, connection) -> None:
        """Record a connection that pynetdicom shut down because no A-ASSOCIATE-RQ arrived within the ACSE timeout.

        pynetdicom (3.0.4) shuts such a socket down without EVT_CONN_CLOSE,
        so the listener's server calls this instead.
        """
        with self._lock:
            entry = None
            for assoc, candidate in self._connections.items():
                if candidate[2].connection is connection:
                    entry = self._connections.pop(assoc)
                    break
        if entry is not None:
            self._record_invalid_request(*entry)

    def _finish(self, event: Event, *, aborted: bool) -> None:
        with self._lock:
            state = self._states.pop(event.assoc, None)
            connection = self._connections.pop(event.assoc, None)
        remove_partial_dataset(event.assoc)
        if connection is not None:
            self._record_invalid_request(*connection)
        if state is None:
            return
        if state.limit_slot is not None:
            self.limits.release(state.limit_slot)

        operations = dict(state.operations)
        log.info("%s %s: %s", state, "aborted" if aborted else "ended", operations or "no requests")
        if aborted and not operations and not state.failure_recorded:
            # Without a reason the connection log could not say why nothing was received.
            proposed = len(event.assoc.accepted_contexts) + len(event.assoc.rejected_contexts)
            self._record_failure(
                state, REASON_ABORTED_BEFORE_REQUESTS,
                f"{REASON_ABORTED_BEFORE_REQUESTS}: the association was aborted before any request; "
                f"{len(event.assoc.accepted_contexts)} of the {proposed} proposed presentation contexts were accepted",
            )
        try:
            self.recorder.record_end(state.record_id, operations=operations, aborted=aborted)
        except Exception:
            log.exception("%s: recording the end of the association failed", state)

    def _reserve_slot(self, identity: IdentityPolicy) -> tuple[int | None, Rejection | None]:
        """Take a slot in the association table; return (slot, None), or (None, a local-limit rejection)."""
        if self.limits is None:
            return None, None
        try:
            return self.limits.reserve(self.worker_number, identity.identity_id), None
        except LimitExceeded as error:
            return None, Rejection(RejectReason.LOCAL_LIMIT_EXCEEDED, *LOCAL_LIMIT_REJECTION, detail=str(error))

    def _record_invalid_request(self, peer: Peer, opened_at, watch: ConnectionWatch) -> None:
        """Record a connection that ended before handle_requested saw its A-ASSOCIATE-RQ.

        A connection closed before its first byte, such as a load balancer's
        health check, is not recorded.
        """
        if not watch.received_data:
            return
        if watch.oversized_pdu is not None:
            detail = (f"the peer declared a PDU of {watch.oversized_pdu} bytes, more than the "
                      f"{MAX_RECEIVED_PDU_BYTES} accepted; the connection was closed")
        else:
            detail = ("the connection ended before a decodable A-ASSOCIATE-RQ arrived: a malformed PDU, "
                      "an undecodable AE title, or no complete request within the ACSE timeout")
        log.warning("connection from %s: %s", _address(peer), detail)
        try:
            self.recorder.record_connection_failure(peer, RejectReason.INVALID_ASSOCIATION_REQUEST, detail, opened_at)
        except Exception:
            log.exception("connection from %s: recording the invalid association request failed", _address(peer))

    def _peer_of(self, assoc) -> Peer:
        """Describe the peer of `assoc` and this listener, with what its TLS handshake negotiated."""
        return Peer(
            address=assoc.requestor.address,
            port=assoc.requestor.port,
            local_port=self.local_port,
            transport=self.transport,
            tls=tls_session_of(assoc) if self.transport is Transport.TLS else None,
        )

    def _state(self, event: Event) -> AssociationState | None:
        with self._lock:
            state = self._states.get(event.assoc)
        if state is None:
            log.error("a request arrived from %s on an association with no record", _address_of(event.assoc))
        return state

    def _permits(self, state: AssociationState, operation: str) -> bool:
        """Return whether the identity may send `operation` now, reading its permissions again for each request.

        When the database cannot be read, the permissions read at the
        association request apply.
        """
        try:
            current = self.recorder.load_identity(state.calling_ae_title)
        except Exception:
            log.exception("%s: reading the identity again failed; using its permissions from the association request", state)
            current = state.identity
        if current is None or not current.enabled or current.identity_id != state.identity.identity_id:
            return False
        return policy.is_operation_permitted(current, operation)

    def _sub_operations(self, state: AssociationState, event: Event, operation: str,
                        items: list[retrieve.RetrieveItem]):
        """Yield the number of C-STORE sub-operations, then a pending (status, data set) per instance.

        pynetdicom sends each data set, counts the sub-operations by their
        C-STORE status and lists the failed SOP Instance UIDs in the final
        or Cancel response as Failed SOP Instance UID List. A file that
        cannot be read becomes a data set that pynetdicom cannot send, so
        its instance is counted and listed as failed.
        """
        yield len(items)
        for item in items:
            if event.is_cancelled:
                log.info("%s: C-%s cancelled by the peer", state, operation.upper())
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, retrieve.dataset_to_send(retrieve.load_dataset(item), event, state)

    def _end_move(self, state: AssociationState, event: Event, destination: retrieve.RemoteAE,
                  items: list[retrieve.RetrieveItem], tls_errors: list[OSError],
                  failures: SubOperationFailures) -> None:
        """Record the failed sub-operations of a C-MOVE, or correct its final status when no association opened.

        When the association with the Move Destination fails, pynetdicom
        (3.0.4) sends 0xA801 (Move Destination unknown) without sub-operation
        counts, although the destination is known. Once the handler has
        yielded a destination, 0xA801 comes only from that failure, so it
        becomes STATUS_SUB_OPERATIONS_REFUSED with every instance counted and
        listed as failed. The association's record gets
        REASON_MOVE_DESTINATION_FAILED with the TLS error where there is one.
        """
        def end_move(response) -> None:
            if response.Status != STATUS_MOVE_DESTINATION_UNKNOWN:
                self._record_failed_sub_operations(state, "move", f"C-MOVE to {destination.ae_title}", response,
                                                   len(items), failures)
                return
            address = f"{destination.host}:{destination.port}{' over TLS' if destination.use_tls else ''}"
            if tls_errors:
                cause = f"the TLS connection failed: {tls_errors[0]}"
            else:
                cause = ("the connection failed, or the destination rejected or aborted the association, "
                         "and dicomd's log shows pynetdicom's error")
            error = ConnectionError(f"no association with {destination.ae_title} at {address}: {cause}")
            # Each request is counted once, so this one moves from "move" to its failure.
            state.operations["move"] -= 1
            if not state.operations["move"]:
                del state.operations["move"]
            self._fail(state, "move_destination_failed", REASON_MOVE_DESTINATION_FAILED, error,
                       STATUS_SUB_OPERATIONS_REFUSED)
            response.Status = STATUS_SUB_OPERATIONS_REFUSED
            response.NumberOfCompletedSuboperations = 0
            response.NumberOfFailedSuboperations = len(items)
            response.NumberOfWarningSuboperations = 0
            response.Identifier = _failed_instances_identifier(event, [item.sop_instance_uid for item in items])

        _change_final_response(event, end_move)

    def _retrieve_items(self, state: AssociationState, event: Event, operation: str):
        """Return (instances, None) for a C-GET or C-MOVE identifier, or (None, status) when it fails.

        The status is an int, or a status Dataset with an Error Comment.
        """
        model = QR_MODELS.get(str(event.request.AffectedSOPClassUID), "STUDY")
        try:
            retrieve_query = retrieve.parse_retrieve_identifier(event.identifier, model)
            with Session(self.recorder.engine) as session:
                return retrieve.find_instances(session, retrieve_query, self.storage_dir), None
        except query.InvalidQuery as error:
            return None, self._reject_identifier(state, operation, error)
        except Exception:
            log.exception("%s: finding the instances of a %s request failed", state, operation.upper())
            state.operations[f"{operation}_failed"] += 1
            return None, STATUS_UNABLE_TO_PROCESS

    def _start_commitment_report(self, event: Event, state: AssociationState, result) -> None:
        """Send the storage commitment report from its own thread, after the N-ACTION response."""
        assoc = event.assoc
        response_sent = threading.Event()

        def on_sent(sent: Event) -> None:
            if type(sent.message).__name__ == "N_ACTION_RSP":
                response_sent.set()

        assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
        thread = threading.Thread(
            target=self._send_commitment_report,
            args=(assoc, state, result, response_sent, on_sent),
            name=f"commitment-report-{state.record_id}",
            daemon=True,
        )
        thread.start()

    def _send_commitment_report(self, assoc, state: AssociationState, result, response_sent, on_sent) -> None:
        response_sent.wait(COMMITMENT_RESPONSE_WAIT_SECONDS)
        assoc.unbind(evt.EVT_DIMSE_SENT, on_sent)
        transaction = result.information.TransactionUID
        try:
            if assoc.is_established:
                status = assoc.send_event_report(
                    result.information, result.event_type,
                    commitment.STORAGE_COMMITMENT_PUSH_MODEL, commitment.STORAGE_COMMITMENT_INSTANCE_UID,
                    delay_seconds=COMMITMENT_REPORT_DELAY_SECONDS,
                )
                if status is not None and "Status" in status:
                    log.info("%s: storage commitment report %s sent, status 0x%04X",
                             state, transaction, status.Status)
                    return
                log.warning("%s: the storage commitment report %s got no response (the device released or "
                            "aborted the association, or the DIMSE timeout passed); sending it on a new association",
                            state, transaction)
            self._send_report_on_new_association(assoc.ae, state, result)
        except Exception:
            log.exception("%s: sending the storage commitment report %s failed", state, transaction)

    def _send_report_on_new_association(self, ae, state: AssociationState, result) -> None:
        transaction = result.information.TransactionUID
        remote = self.recorder.load_remote_ae(state.calling_ae_title)
        if remote is None:
            log.error("%s: the storage commitment report %s cannot be sent: the identity has no retrieve address",
                      state, transaction)
            return

        association = ae.associate(
            remote.host, remote.port,
            contexts=[commitment.report_context()],
            ext_neg=[commitment.report_role()],
            **retrieve.association_options(remote, self.settings),
        )
        if not association.is_established:
            log.error("%s: the storage commitment report %s was not sent: no association with %s at %s:%s",
                      state, transaction, remote.ae_title, remote.host, remote.port)
            return
        try:
            status, _ = association.send_n_event_report(
                result.information, result.event_type,
                commitment.STORAGE_COMMITMENT_PUSH_MODEL, commitment.STORAGE_COMMITMENT_INSTANCE_UID,
            )
            log.info("%s: storage commitment report %s sent to %s at %s:%s, status %s", state, transaction,
                     remote.ae_title, remote.host, remote.port,
                     f"0x{status.Status:04X}" if "Status" in status else "none")
        finally:
            association.release()

    def _remove_unindexed(self, state: AssociationState, relative_path: str) -> None:
        try:
            remove_instance(self.storage_dir, relative_path)
        except OSError:
            log.exception("%s: removing the unindexed file %s failed", state, relative_path)

    def _refuse(self, state: AssociationState, operation: str) -> int:
        log.warning("%s: %s is not permitted for this identity", state, operation)
        state.operations[f"{operation}_not_permitted"] += 1
        self._record_failure(state, REASON_OPERATION_NOT_PERMITTED, f"{REASON_OPERATION_NOT_PERMITTED}: {operation}")
        return STATUS_NOT_AUTHORIZED

    def _store_failure(self, state: AssociationState, sop_instance_uid: str, reason: str, error: Exception,
                       status: int) -> Dataset:
        """Count and record a C-STORE that failed with `error`, and return `status` with the error as Error Comment.

        The recorded detail also names the SOP instance, which the response
        names for the device in Affected SOP Instance UID.
        """
        counter = "store_invalid" if reason == REASON_INVALID_DATASET else "store_failed"
        self._fail(state, counter, reason, f"SOP instance {sop_instance_uid}: {error}", status)
        return _status_with_error_comment(status, str(error))

    def _fail(self, state: AssociationState, counter: str, reason: str, error: Exception | str, status: int) -> int:
        log.warning("%s: %s: %s", state, reason, error)
        state.operations[counter] += 1
        self._record_failure(state, reason, f"{reason}: {error}")
        return status

    def _reject_identifier(self, state: AssociationState, operation: str, error: query.InvalidQuery) -> Dataset:
        """Count and record an invalid C-FIND, C-GET or C-MOVE identifier, and return its status with the error as Error Comment."""
        described = ValueError(f"C-{operation.upper()} identifier: {error}")
        self._fail(state, f"{operation}_invalid", REASON_INVALID_IDENTIFIER, described, STATUS_IDENTIFIER_MISMATCH)
        return _status_with_error_comment(STATUS_IDENTIFIER_MISMATCH, str(error))

    def _record_failed_sub_operations(self, state: AssociationState, operation: str, request: str, response,
                                      total: int, failures: SubOperationFailures) -> None:
        """Count the failed sub-operations of a final C-GET or C-MOVE `response` and record their causes.

        `operation` is "get" or "move", and `request` names the request in
        the detail. The count is the one pynetdicom sends to the peer, so the
        record agrees with what the device saw.
        """
        failed = response.NumberOfFailedSuboperations or 0
        if not failed:
            return
        state.operations[f"{operation}_sub_operations_failed"] += failed
        detail = f"{request}: {failed} of {total} C-STORE sub-operations failed"
        causes = failures.describe()
        if causes:
            detail = f"{detail}: {causes}"
        log.warning("%s: %s", state, detail)
        self._record_failure(state, REASON_SUB_OPERATIONS_FAILED, f"{REASON_SUB_OPERATIONS_FAILED}: {detail}")

    def _record_failure(self, state: AssociationState, reason: str, detail: str) -> None:
        state.failure_recorded = True
        try:
            self.recorder.record_failure(state.record_id, reason, detail)
        except Exception:
            log.exception("%s: recording %s failed", state, reason)


class SubOperationFailures:
    """The causes of the failed C-STORE sub-operations of one C-GET or C-MOVE request.

    pynetdicom (3.0.4) counts failed sub-operations in its responses but only
    logs why each one failed. So `watch` wraps the `send_c_store` of the
    association that carries the sub-operations and notes each failure as
    pynetdicom counts it: an exception, no response, or a status that is
    not a Storage Success or Warning status.
    """

    def __init__(self):
        # SOP Instance UIDs by cause, in the order the causes first occurred.
        self.instances_by_cause: dict[str, list[str]] = {}

    def watch(self, assoc) -> None:
        send_c_store = assoc.send_c_store

        def send_noting_failure(dataset, *args, **kwargs):
            sop_instance_uid = str(dataset.get("SOPInstanceUID", "")) if isinstance(dataset, Dataset) else str(dataset)
            try:
                status = send_c_store(dataset, *args, **kwargs)
            except Exception as error:
                self._note(str(error) or type(error).__name__, sop_instance_uid)
                raise
            cause = _store_failure_cause(status)
            if cause is not None:
                self._note(cause, sop_instance_uid)
            return status

        assoc.send_c_store = send_noting_failure

    def stop_watching(self, assoc) -> None:
        """Restore the association's own `send_c_store`, so that the next request wraps that and not this wrapper."""
        assoc.__dict__.pop("send_c_store", None)

    def describe(self) -> str:
        """Return the first MAX_LISTED_FAILURE_CAUSES causes, each with one of its SOP instances and the count of the others."""
        parts = []
        for cause, instances in list(self.instances_by_cause.items())[:MAX_LISTED_FAILURE_CAUSES]:
            others = f" and {len(instances) - 1} more" if len(instances) > 1 else ""
            parts.append(f"{cause} (SOP instance {instances[0]}{others})")
        unlisted = len(self.instances_by_cause) - MAX_LISTED_FAILURE_CAUSES
        if unlisted > 0:
            parts.append(f"{unlisted} more causes in dicomd's log")
        return "; ".join(parts)

    def _note(self, cause: str, sop_instance_uid: str) -> None:
        self.instances_by_cause.setdefault(cause, []).append(sop_instance_uid)


def _store_failure_cause(status: Dataset) -> str | None:
    """Return why a C-STORE sub-operation failed, judged as pynetdicom (3.0.4) counts it, or None if it did not fail."""
    if "Status" not in status:
        return "no C-STORE response: the DIMSE timeout passed or the association ended"
    code = status.Status
    category = STORAGE_SERVICE_CLASS_STATUS.get(code)
    if category is not None and category[0] != STATUS_FAILURE:
        return None
    meaning = category[1] if category is not None else "not a Storage status"
    cause = f"C-STORE status 0x{code:04X} ({meaning})"
    comment = status.get("ErrorComment")
    return f"{cause}: {comment}" if comment else cause


def _status_with_error_comment(status: int, comment: str) -> Dataset:
    """Return a status Dataset that pynetdicom sends with `comment` as Error Comment (0000,0902)."""
    text = comment.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    if len(text) > ERROR_COMMENT_MAX_CHARS:
        text = text[: ERROR_COMMENT_MAX_CHARS - 3] + "..."
    dataset = Dataset()
    dataset.Status = status
    dataset.ErrorComment = text
    return dataset


def _final_move_status(event: Event, status: int | Dataset):
    """Make pynetdicom send `status` as the final C-MOVE response, and return the destination to yield for it.

    pynetdicom (3.0) lets a C-MOVE handler end a request before any
    sub-operation only with 0xA801, by yielding an unknown destination. Its
    final response to this request is changed to carry `status`: an int, or
    a status Dataset whose elements, such as Error Comment, are copied too.
    """
    def set_status(response) -> None:
        if isinstance(status, Dataset):
            for element in status:
                setattr(response, element.keyword, element.value)
        else:
            response.Status = status

    _change_final_response(event, set_status)
    return None, None


def _end_get_without_sub_operations(event: Event) -> int:
    """Prepare a C-GET to end with a failure before any sub-operation, and return the count to yield first.

    pynetdicom (3.0) ends a C-GET whose handler yields 0 sub-operations with
    success, so the handler yields 1 and then the failure status. pynetdicom
    would count that one as failed and add an empty Failed SOP Instance UID
    List, which DCMTK's getscu (3.6.7) cannot read before its release. The
    final response is sent with zero counts and no identifier instead.
    """
    def no_sub_operations(response) -> None:
        response.NumberOfFailedSuboperations = 0
        response.NumberOfWarningSuboperations = 0
        response.NumberOfCompletedSuboperations = 0
        response.Identifier = None

    _change_final_response(event, no_sub_operations)
    return 1


def _change_final_response(event: Event, change) -> None:
    """Pass the final response to the C-GET or C-MOVE request of `event` through `change` before pynetdicom sends it.

    The final response is the first one to this request whose status is
    not Pending. Other messages on the association, such as a storage
    commitment report sent from another thread, pass unchanged. An error in
    `change` is logged and the response is sent as pynetdicom built it.
    """
    dimse = event.assoc.dimse
    send_msg = dimse.send_msg
    request_type = type(event.request)
    message_id = event.request.MessageID

    def send_changed(message, context_id):
        if (isinstance(message, request_type) and message.MessageIDBeingRespondedTo == message_id
                and message.Status != STATUS_PENDING):
            dimse.send_msg = send_msg
            try:
                change(message)
            except Exception:
                log.exception("changing the final %s response to message %s from %s failed",
                              request_type.__name__.replace("_", "-"), message_id, _address_of(event.assoc))
        send_msg(message, context_id)

    dimse.send_msg = send_changed


def _failed_instances_identifier(event: Event, sop_instance_uids: list[str]) -> BytesIO:
    """Encode a response identifier with Failed SOP Instance UID List (0008,0058) in the request's transfer syntax."""
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = sop_instance_uids
    syntax = event.context.transfer_syntax
    return BytesIO(encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated))


class ConnectionWatch:
    """Wraps the `recv` of a connection's pynetdicom socket: notes that data arrived and bounds PDU lengths.

    pynetdicom's DUL reads a PDU's 6-byte header, then calls `recv` with the
    declared length of the rest, so that argument is the declared length.
    The data is read straight into a buffer of that length, where pynetdicom
    (3.0.4) would read it 4 KiB at a time: a 1 MiB PDU then takes a few
    system calls instead of 256.
    """

    def __init__(self, assoc):
        # The accepted socket, to find this watch when pynetdicom shuts it down directly.
        self.connection = assoc.dul.socket.socket
        self.received_data = False
        self.oversized_pdu: int | None = None
        assoc.dul.socket.recv = self.recv

    def recv(self, nr_bytes: int):
        if nr_bytes > MAX_RECEIVED_PDU_BYTES:
            self.oversized_pdu = nr_bytes
            # pynetdicom treats an OSError from recv as a closed connection.
            raise OSError(f"declared PDU length {nr_bytes} exceeds {MAX_RECEIVED_PDU_BYTES} bytes")
        try:
            data = self._read(nr_bytes)
        except TimeoutError:
            # pynetdicom reads only when data is waiting, so a timeout here
            # means the peer stopped in the middle of a PDU.
            self.received_data = True
            raise
        if data:
            self.received_data = True
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """Read `nr_bytes`, or fewer if the peer closes the connection first, as pynetdicom's recv does."""
        data = bytearray(nr_bytes)
        view = memoryview(data)
        received = 0
        while received < nr_bytes:
            count = self.connection.recv_into(view[received:])
            if not count:
                break
            received += count
        view.release()
        if received < nr_bytes:
            del data[received:]
        return data


def remove_partial_dataset(assoc) -> None:
    """Remove the temporary file of a C-STORE data set that was still arriving when the association ended.

    pynetdicom (3.0) writes an incoming data set to a temporary file and
    leaves that file behind when the association aborts mid-transfer.
    """
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
    except OSError:
        log.exception("removing the partial data set %s from %s failed", partial.name, _address_of(assoc))
        return
    log.info("removed the partial data set %s of the association from %s", partial.name, _address_of(assoc))


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
