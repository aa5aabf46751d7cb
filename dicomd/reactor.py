"""Accepted associations whose pynetdicom threads wait for work instead of polling for it.

pynetdicom (3.0.4) runs two threads per association. The DUL thread reads
PDUs and sends what the association queued; the association thread serves
the DIMSE messages the DUL assembled. Both poll: the DUL sleeps 1 ms
whenever it has nothing to do and the association thread sleeps 1 ms
before every look at its queues. A C-STORE on one association waits
through several of these sleeps (the request's last PDU, the handler, the
response), which costs more time per instance than the handler's own work.

Here the DUL thread blocks in select() on its connection and on a wake-up
socket. The association writes to that socket whenever it queues a PDU or
stops the thread. The association thread blocks on an event, which the DUL
sets after each state machine action. Both threads still wake up every
IDLE_WAIT_SECONDS to check their timers. The rest, including the state
machine, is pynetdicom's.

pynetdicom's DUL also sends every queued primitive before it reads the
connection again, so there a C-CANCEL waits behind every pending C-FIND
response that a handler has queued. Here the DUL alternates between reading
and sending while both have work, and a handler can wait until few
primitives are left to send (`WakingDUL.wait_for_send_queue`).

Once dicomd has accepted an association, the DUL also receives C-STORE
requests itself and runs the store handler in its own thread
(`dicomd.direct_store` says how and when).

NOTE: these classes use pynetdicom 3.0.4's internals (the DUL's queues,
_read_pdu_data, _decode_pdu and state machine, Association._run_reactor,
the DIMSE provider's message in progress), which is why pyproject.toml
pins pynetdicom below 3.1. A new version needs this module checked
against its source.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from datetime import datetime
from io import BytesIO

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomd.direct_store import (
    CONTROL_COMMAND,
    CONTROL_LAST,
    MIN_PEER_PDU_BYTES,
    P_DATA_TF,
    STATUS_HANDLER_ERROR,
    STATUS_PROCESSING_FAILURE,
    VERIFICATION_SOP_CLASS,
    EchoCommand,
    EchoHandler,
    MalformedPDU,
    ReceivingInstance,
    StoreCommand,
    StoreHandler,
    echo_response_pdu,
    is_storage_request,
    parse_command,
    split_pdvs,
    new_receiving_file,
    store_response_pdu,
)

log = logging.getLogger(__name__)

# How long a thread with nothing to do sleeps before it checks the ARTIM and
# network timers again. Both timers count whole seconds.
IDLE_WAIT_SECONDS = 0.05

# A-ABORT source 0x02: the DICOM UL service provider (PS3.8 9.3.8).
ABORT_SOURCE_PROVIDER = 0x02

# The PDU types of PS3.8 9.3.1: A-ASSOCIATE-RQ (0x01) to A-ABORT (0x07).
KNOWN_PDU_TYPES = range(0x01, 0x08)
# The descriptions, in the log and the association's detail, of PDUs that interrupt a data set.
INTERRUPTING_PDUS = {0x05: "an A-RELEASE-RQ arrived", 0x07: "an A-ABORT arrived"}
_PDU_HEADER = struct.Struct(">BBL")


class WakingDUL(DULServiceProvider):
    """pynetdicom's DUL, with a reactor that sleeps in select() until a PDU arrives or one is queued."""

    def __init__(self, assoc: Association):
        # The wake-up pair and the condition exist before Thread.__init__ sets _kill_thread.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        # Notified after each state machine action, which may have sent a queued primitive.
        self._sent = threading.Condition()
        self._stopping = False
        # Whether the next round reads the connection first when primitives are also queued.
        self._read_turn = False
        # Set once the association is accepted: see receive_requests_directly.
        self._store_handler: StoreHandler | None = None
        self._echo_handler: EchoHandler | None = None
        self._on_interrupted = None
        # The association's name in log lines, set when it is accepted; until then, the peer address.
        self._description: str | None = None
        self._receiving: ReceivingInstance | None = None
        # Whether the store handler runs in this thread now.
        self._storing = False
        # Set when the peer's A-RELEASE-RQ or A-ABORT arrives: see WakingAssociation.send_event_report.
        self.peer_ending = threading.Event()
        # Whether an accepted connection has not yet sent its A-ASSOCIATE-RQ: see _end_request_wait.
        self._awaiting_request = assoc.is_acceptor
        super().__init__(assoc)

    # pynetdicom stops the thread by setting this flag from other threads
    # (kill_dul, stop_dul), so the setter wakes the reactor to notice it.
    @property
    def _kill_thread(self) -> bool:
        return self._stopping

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._stopping = value
        if value:
            self._wake()
            self._notify_sent()

    def send_pdu(self, primitive) -> None:
        super().send_pdu(primitive)
        self._wake()

    def wait_for_send_queue(self, max_queued: int) -> None:
        """Block until at most `max_queued` primitives wait to be sent, or the DUL thread stops.

        A handler that yields responses faster than the connection carries
        them calls this first, so that a C-CANCEL finds few responses still
        queued. When the peer stops reading, a send times out after the
        network timeout (dicomd.listener sets it on the socket), the
        connection closes and the thread stops, which ends the wait.
        """
        with self._sent:
            while len(self.to_provider_queue.queue) > max_queued and not self._stopping:
                # The timeout only bounds a missed notification.
                self._sent.wait(IDLE_WAIT_SECONDS)

    def receive_requests_directly(self, store_handler: StoreHandler, echo_handler: EchoHandler, *,
                                  on_interrupted, description: str) -> None:
        """Receive C-STORE and C-ECHO requests in this thread from now on, and respond with the handlers' statuses.

        `store_handler` gets the presentation context, the request's command
        and the received Part 10 file, which is closed or removed after it
        returns. `echo_handler` takes no arguments. `on_interrupted(sop_instance_uid,
        received_bytes, cause)` is called when the association ends while a
        data set is arriving, after its file is removed. `description` names
        the association in log lines.
        """
        self._store_handler = store_handler
        self._echo_handler = echo_handler
        self._on_interrupted = on_interrupted
        self._description = description

    def _decode_pdu(self, bytestream: bytearray):
        pdu, event = super()._decode_pdu(bytestream)
        if isinstance(pdu, (A_RELEASE_RQ, A_ABORT_RQ)):
            self.peer_ending.set()
            if not self.assoc._reactor_checkpoint.is_set():
                # Another thread paused the reactor and may wait for a DIMSE
                # response that will not come, so an empty message ends that wait.
                self.assoc.dimse.msg_queue.put((None, None))
        return pdu, event

    def idle_timer_expired(self) -> bool:
        """Return whether the network timeout has passed without activity. A store handler at work is activity.

        The association thread checks this. The handler may wait longer than
        the network timeout, for a locked database for example, and the
        association must not be aborted meanwhile.
        """
        return not self._storing and super().idle_timer_expired()

    def run_reactor(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_receiving("the association ended")
            self._wake_reader.close()
            self._wake_writer.close()
            self._stopping = True
            self._notify_sent()

    def _serve(self) -> None:
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        while not self._kill_thread:
            # The ARTIM event goes on the queue ahead of anything read this round.
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                self._queue_next_event()
            except Exception:
                self._abort_after_error()
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self.state_machine.do_action(event)
            self._end_request_wait()
            self._notify_sent()
            self.assoc.wake()

    def _end_request_wait(self) -> None:
        """Stop the association thread's wait for an A-ASSOCIATE-RQ once the connection has ended without one.

        pynetdicom's association thread waits for the request for the whole
        ACSE timeout, even after the connection closed, so a port check kept
        both threads and the worker's count of open associations for that long.
        An empty item ends the wait as pynetdicom's own timeout does, and the
        closed connection is not shut down a second time.
        """
        if not self._awaiting_request:
            return
        state = self.state_machine.current_state
        if state == "Sta3":
            # Sta3: the A-ASSOCIATE-RQ arrived and went to the association thread.
            self._awaiting_request = False
        elif state == "Sta1":
            self._awaiting_request = False
            self.to_user_queue.put(None)

    def _queue_next_event(self) -> None:
        """Queue the event of one primitive to send or of one PDU read, as pynetdicom's rounds do.

        While primitives are queued and the connection has data, rounds
        alternate between the two, so that neither direction waits for the
        other to run dry.
        """
        if not self.to_provider_queue.queue:
            if self._is_transport_event():
                self._idle_timer.restart()
            return

        if self._read_turn and self._has_incoming_data():
            self._read_turn = False
            if self._is_transport_event():
                self._idle_timer.restart()
            return

        self._read_turn = True
        self._process_recv_primitive()

    def _read_pdu_data(self) -> None:
        """Read one PDU; receive a C-STORE request's P-DATA-TF directly, hand every other PDU to pynetdicom.

        The checks, the log lines and the events queued for a short or
        unknown PDU are those of pynetdicom's own method.
        """
        if self._store_handler is None:
            super()._read_pdu_data()
            return

        try:
            header = self.socket.recv(6)
            if len(header) < 6:
                self._drop_receiving("the connection closed")
                # Evt17: the connection closed.
                self.event_queue.put("Evt17")
                return
            pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
            if pdu_type not in KNOWN_PDU_TYPES:
                log.error("%s: unknown PDU type 0x%02X received", self._label(), pdu_type)
                self._drop_receiving(f"an unknown PDU type 0x{pdu_type:02X} arrived")
                # Evt19: an unrecognised or invalid PDU.
                self.event_queue.put("Evt19")
                return
            body = self.socket.recv(pdu_length)
        except (OSError, TimeoutError) as error:
            log.error("%s: the connection closed before the whole PDU arrived: %s", self._label(), error)
            self._drop_receiving("the connection closed")
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            log.error("%s: the connection closed after %d of the %d bytes its last PDU declares",
                      self._label(), len(body), pdu_length)
            self._drop_receiving("the connection closed")
            self.event_queue.put("Evt17")
            return

        if pdu_type == P_DATA_TF and self._receive_directly(memoryview(body)):
            return
        # Only a release or an abort can interrupt a data set, and it never completes.
        self._drop_receiving(INTERRUPTING_PDUS.get(pdu_type, f"a PDU of type 0x{pdu_type:02X} arrived"))

        try:
            pdu, event = self._decode_pdu(bytearray(header + body))
        except Exception:
            log.exception("%s: a PDU could not be decoded", self._label())
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _receive_directly(self, body: memoryview) -> bool:
        """Take a P-DATA-TF PDU that starts or continues a direct C-STORE, or is a C-ECHO; return False to leave it to pynetdicom."""
        if self._receiving is None:
            values = self._new_message(body)
            if values is None:
                return False
            # The command set is parsed once, for either kind of request.
            command = parse_command(values[0][2])
            if isinstance(command, EchoCommand):
                return self._answer_echo(values, command)
            if command is None:
                return False
            values = self._start_receiving(values, command)
            if values is None:
                return False
        else:
            try:
                values = split_pdvs(body)
            except MalformedPDU as error:
                self._abort_receiving(f"a malformed P-DATA-TF PDU: {error}")
                return True

        for index, (context_id, control, fragment) in enumerate(values):
            if self._receiving is None:
                # A new message starts after the last fragment, in the same PDU.
                self._pass_to_dimse(values[index:])
                return True
            if control & CONTROL_COMMAND or context_id != self._receiving.context.context_id:
                self._abort_receiving("a command or another presentation context within a C-STORE data set")
                return True
            self._receiving.write_fragment(fragment)
            if control & CONTROL_LAST:
                self._complete_store()
        return True

    def _new_message(self, body: memoryview) -> list | None:
        """Return the values of a PDU that starts a new message with its whole command set, if nothing else is in progress."""
        if not self._may_start_directly():
            return None
        try:
            values = split_pdvs(body)
        except MalformedPDU:
            return None
        if not values:
            return None
        _, control, _ = values[0]
        if control & (CONTROL_COMMAND | CONTROL_LAST) != CONTROL_COMMAND | CONTROL_LAST:
            return None
        return values

    def _start_receiving(self, values: list, command: StoreCommand) -> list | None:
        """Start receiving the C-STORE request `command`, the first of `values`; return the values after it, or None."""
        context_id = values[0][0]
        context = self.assoc._accepted_cx.get(context_id)
        if context is None or not is_storage_request(command):
            return None
        try:
            self._receiving = ReceivingInstance(context, command, new_receiving_file())
        except OSError:
            log.exception("%s: creating the file for an incoming data set failed", self._label())
            return None
        return values[1:]

    def _answer_echo(self, values: list, command: EchoCommand) -> bool:
        """Respond to the C-ECHO request `command` if it is all of `values` and on the Verification context.

        Returns False, to leave the request to pynetdicom, otherwise.
        """
        if len(values) != 1:
            return False
        context_id = values[0][0]
        context = self.assoc._accepted_cx.get(context_id)
        if context is None or context.abstract_syntax != VERIFICATION_SOP_CLASS:
            return False

        try:
            status = int(self._echo_handler())
        except Exception:
            log.exception("%s: the C-ECHO handler failed", self._label())
            status = STATUS_PROCESSING_FAILURE
        self._idle_timer.restart()
        if self.state_machine.current_state == "Sta6" and not self.assoc.is_aborted:
            self.socket.send(echo_response_pdu(context_id, command, status))
        return True

    def _may_start_directly(self) -> bool:
        """Return whether nothing else is in progress on the association, so a new message may take the direct path."""
        assoc = self.assoc
        peer_maximum = assoc.requestor.maximum_length
        # Sta6 is the DUL's own "association established". The association
        # thread sets its is_established flag a moment after the DUL sent the A-ASSOCIATE-AC.
        return (
            self.state_machine.current_state == "Sta6"
            and not assoc.acceptor.accepted_common_extended
            and assoc.dimse.message is None
            and self.event_queue.empty()
            and not self.to_provider_queue.queue
            and (not peer_maximum or peer_maximum >= MIN_PEER_PDU_BYTES)
        )

    def _complete_store(self) -> None:
        """Run the store handler on the complete data set and send its status."""
        receiving = self._receiving
        self._receiving = None
        received = receiving.finish()
        command = receiving.command
        self._storing = True
        error_comment = None
        try:
            # The handler returns a status, or a status data set with an Error Comment as pynetdicom takes it.
            result = self._store_handler(receiving.context, command, received)
            if isinstance(result, Dataset):
                status, error_comment = int(result.Status), result.get("ErrorComment")
            else:
                status = int(result)
        except Exception:
            log.exception("%s: the store handler failed on SOP instance %s", self._label(), command.sop_instance_uid)
            status = STATUS_HANDLER_ERROR
        finally:
            # The handler linked what it keeps.
            receiving.discard()
            self._idle_timer.restart()
            self._storing = False

        # As pynetdicom does, no response once the association is aborted.
        if self.state_machine.current_state == "Sta6" and not self.assoc.is_aborted:
            self.socket.send(store_response_pdu(receiving.context.context_id, command, status, error_comment))

    def _drop_receiving(self, cause: str) -> None:
        """Remove the file of a data set that will never complete, if one is arriving, and report it."""
        receiving, self._receiving = self._receiving, None
        if receiving is None:
            return
        receiving.discard()
        sop_instance_uid = receiving.command.sop_instance_uid
        log.info("%s: removed the partial data set of SOP instance %s (%d bytes received; %s)",
                 self._label(), sop_instance_uid, receiving.data_set_bytes, cause)
        try:
            self._on_interrupted(sop_instance_uid, receiving.data_set_bytes, cause)
        except Exception:
            log.exception("%s: recording the interrupted data set of SOP instance %s failed",
                          self._label(), sop_instance_uid)

    def _label(self) -> str:
        return self._description or f"the association from {self.assoc.requestor.address}"

    def _pass_to_dimse(self, values: list) -> None:
        """Give pynetdicom's DIMSE provider the values that follow a direct C-STORE in one PDU."""
        primitive = P_DATA()
        primitive.presentation_data_value_list = [
            [context_id, bytes([control]) + bytes(fragment)] for context_id, control, fragment in values
        ]
        self.assoc.dimse.receive_primitive(primitive)
        # A message it completed waits for the association thread, as after pynetdicom's own DT-2 action.
        self.assoc.wake()

    def _abort_receiving(self, problem: str) -> None:
        log.error("%s: the C-STORE data set was interrupted by %s; aborting the association", self._label(), problem)
        self._drop_receiving(problem)
        # Evt19 in Sta6 sends an A-ABORT and ends the association, as pynetdicom does for an invalid PDU.
        self.event_queue.put("Evt19")

    def _abort_after_error(self) -> None:
        """Send an A-ABORT directly and stop both threads, as pynetdicom does when its reactor fails."""
        log.exception("the DUL of the association from %s failed; aborting it", self.assoc.requestor.address)
        abort = A_ABORT_RQ()
        abort.source = ABORT_SOURCE_PROVIDER
        abort.reason_diagnostic = 0x00
        try:
            self.socket.send(abort.encode())
        except Exception:
            log.debug("sending the A-ABORT failed", exc_info=True)
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _wait_for_work(self) -> None:
        """Block until the connection has data, a primitive is queued, the thread is stopped or IDLE_WAIT_SECONDS pass."""
        waiting_on = [self._wake_reader]
        connection = self._open_connection()
        if connection is not None:
            # Data that OpenSSL already decrypted is invisible to select().
            if isinstance(connection, ssl.SSLSocket) and connection.pending():
                return
            waiting_on.append(connection)

        # Something may have been queued between the check and this wait;
        # the wake-up byte written for it is still unread, so select() returns at once.
        try:
            readable, _, _ = select.select(waiting_on, [], [], IDLE_WAIT_SECONDS)
        except (OSError, ValueError):
            # Another thread closed the connection, and the next round handles that.
            return
        if self._wake_reader in readable:
            self._drain_wake_ups()

    def _has_incoming_data(self) -> bool:
        """Return whether the connection has data to read now, without the side effects of pynetdicom's check.

        pynetdicom's `AssociationSocket.ready` queues a closed-connection
        event when select() fails. Here a failure only means "no data", so
        the round sends its primitive and queues no second event.
        """
        connection = self._open_connection()
        if connection is None:
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True
        try:
            readable, _, _ = select.select([connection], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    def _notify_sent(self) -> None:
        with self._sent:
            self._sent.notify_all()

    def _open_connection(self) -> socket.socket | None:
        transport = self.socket
        if transport is None or not transport._is_connected or transport.socket is None:
            return None
        if transport.socket.fileno() < 0:
            return None
        return transport.socket

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except (BlockingIOError, OSError):
            # A full buffer already contains a wake-up. A closed socket means the thread has ended.
            pass

    def _drain_wake_ups(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass


class WakingAssociation(Association):
    """pynetdicom's association, whose reactor waits on an event that its DUL sets instead of sleeping 1 ms per round."""

    def __init__(self, ae, mode: str):
        self._activity = threading.Event()
        self._stopping = False
        # Called without arguments when the association's thread ends, for any reason.
        self.on_ended = None
        super().__init__(ae, mode)
        self.dul = WakingDUL(self)
        # Association.__init__ gave these timeouts to the DUL it replaced.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.on_ended is not None:
                self.on_ended()

    # Set by kill() and by the DUL after a failure; the reactor must notice it at once.
    @property
    def _kill(self) -> bool:
        return self._stopping

    @_kill.setter
    def _kill(self, value: bool) -> None:
        self._stopping = value
        if value:
            self.wake()

    def wake(self) -> None:
        """Let the reactor look at its queues now: a message, a release or an abort may have arrived."""
        self._activity.set()

    def send_event_report(self, information: Dataset, event_type: int, class_uid: str,
                          instance_uid: str, *, delay_seconds: float) -> Dataset | None:
        """Send an N-EVENT-REPORT request from another thread; return its response's status, or None without one.

        The request goes out after `delay_seconds`, unless the peer requests
        release or aborts in that time. None means that the peer did so, or
        that no response came within the DIMSE timeout, after which the
        association is aborted, as pynetdicom does. pynetdicom's
        send_n_event_report keeps the reactor paused for the whole DIMSE
        timeout, so a release request that crossed the report got its
        response only then, and that was an A-ABORT. Here the reactor
        sends the A-RELEASE-RP at once.
        """
        if self.dul.peer_ending.wait(delay_seconds):
            return None
        context = self._get_valid_context(class_uid, "", None)
        transfer_syntax = context.transfer_syntax[0]
        request = N_EVENT_REPORT()
        request.MessageID = 1
        request.AffectedSOPClassUID = class_uid
        request.AffectedSOPInstanceUID = instance_uid
        request.EventTypeID = event_type
        encoded = encode(information, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
                         transfer_syntax.is_deflated)
        if encoded is None:
            raise ValueError("encoding the N-EVENT-REPORT's Event Information failed")
        request.EventInformation = BytesIO(encoded)

        # Paused, as pynetdicom pauses it, so that the reactor does not take the response.
        self._reactor_checkpoint.clear()
        try:
            while not self._is_paused and not self._kill:
                time.sleep(0.0001)
            # A connection that closed without an A-ABORT leaves peer_ending unset.
            if self.dul.peer_ending.is_set() or self._kill or not self.is_established:
                return None
            self.dimse.send_msg(request, context.context_id)
            try:
                _, response = self.dimse.msg_queue.get(timeout=self.dimse_timeout)
            except queue.Empty:
                response = None
        finally:
            self._reactor_checkpoint.set()

        if response is None:
            if not self.dul.peer_ending.is_set() and self.is_established:
                log.error("%s: no response to the N-EVENT-REPORT request within the DIMSE timeout; aborting",
                          self.dul._label())
                self.abort()
            return None
        return self._check_received_status(response)

    def _run_reactor(self) -> None:
        """Serve DIMSE messages until the association is released, aborted, lost or idle too long.

        The checks and their order are pynetdicom's; only the wait differs.
        """
        self._is_paused = False
        while not self._kill:
            # The reactor counts as paused while it waits, so a send_*() call from
            # another thread may use the DIMSE queue meanwhile. The checkpoint
            # below then blocks the reactor until that call is done.
            self._is_paused = True
            self._activity.wait(IDLE_WAIT_SECONDS)
            self._activity.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, message = self.dimse.get_msg(block=False)
            if message:
                self._serve_request(message, context_id)
                # The DUL may have assembled the next message while this one was served.
                self._activity.set()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("association from %s released", self.requestor.address)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                # Takes the abort primitive off the queue, so EVT_ACSE_RECV fires for it.
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("network timeout on the association from %s", self.requestor.address)
                if self.network_timeout_response == "A-RELEASE":
                    # release() waits until the reactor is paused, and this is the reactor.
                    self._is_paused = True
                    self.release()
                else:
                    self.abort()
                self.kill()
                return


class WakingRequestHandler(RequestHandler):
    """The server's handler for a new connection: builds a WakingAssociation configured as pynetdicom would."""

    def _create_association(self) -> WakingAssociation:
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        load = getattr(self.server, "load", None)
        if load is not None:
            load.opened()
            assoc.on_ended = load.closed
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))

        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies the server's contexts for every association,
        # about 14 ms for dicomd's 180. Negotiation only reads them and builds
        # new contexts for its result, so a new list of the same ones is enough.
        acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event, handlers in self.server._handlers.items():
            if event.is_intervention:
                if handlers:
                    assoc.bind(event, *handlers)
            else:
                for handler, arguments in handlers:
                    assoc.bind(event, handler, arguments)
        return assoc
