"""Mutated A-ASSOCIATE-RQ and P-DATA-TF PDUs sent at a running dicomd on loopback.

After every example the worker processes must still be the same ones.
Afterwards a normal C-ECHO must succeed, and the workers' resident memory
must have grown by less than a bound.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dicomd_process import add_identity
from tests.reliability_tools import association_request_pdu, p_data_pdu, read_pdu, rss_bytes, sender, worker_pids

EXAMPLES = 30
# Seconds to wait for dicomd's response to one mutated PDU before closing the connection.
ANSWER_WAIT_SECONDS = 0.3
# Growth of a worker's resident memory accepted over the whole run. A worker
# keeps at most one PDU of 4 MiB per connection (MAX_RECEIVED_PDU_BYTES in
# dicomd.handlers) in memory, so growth near this bound means a leak.
RSS_GROWTH_LIMIT_BYTES = 64 * 1024 * 1024
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def environ(environ):
    """A short ACSE timeout, so that connections left waiting for the rest of a PDU end within seconds."""
    return {**environ, "DICOM_ACSE_TIMEOUT": "2", "DICOM_NETWORK_TIMEOUT": "5"}


def command_element(element: int, value: bytes) -> bytes:
    """Encode one command element of group 0000 in Implicit VR Little Endian."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def echo_command() -> bytes:
    """Return the command set of a C-ECHO-RQ (PS3.7 9.3.5) with Message ID 1."""
    elements = (
        command_element(0x0002, VERIFICATION.encode() + b"\x00")
        + command_element(0x0100, struct.pack("<H", 0x0030))
        + command_element(0x0110, struct.pack("<H", 1))
        + command_element(0x0800, struct.pack("<H", 0x0101))
    )
    return command_element(0x0000, struct.pack("<L", len(elements))) + elements


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """Mutate `original`: overwrite some bytes, maybe truncate it, maybe change the declared PDU length."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data[2:6] = struct.pack(">L", draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


ASSOCIATION_REQUESTS = mutations(association_request_pdu(b"MODALITY1"))
P_DATA = mutations(p_data_pdu(1, 0x03, echo_command()))


def send_association_request(port: int, pdu: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WAIT_SECONDS) as connection:
        connection.sendall(pdu)
        try:
            read_pdu(connection)
        except (TimeoutError, ConnectionResetError):
            pass


def send_p_data(port: int, pdu: bytes) -> None:
    """Open a valid association from MODALITY1, then send `pdu` on it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(association_request_pdu(b"MODALITY1"))
        response = read_pdu(connection)
        assert response[:1] == b"\x02", f"the association request was not accepted: {response[:16].hex()}"
        connection.settimeout(ANSWER_WAIT_SECONDS)
        try:
            connection.sendall(pdu)
            read_pdu(connection)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass


def echo_status(port: int) -> int | None:
    assoc = sender("MODALITY1").associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "a normal association was not accepted"
    response = assoc.send_c_echo()
    assoc.release()
    return response.Status if "Status" in response else None


def test_mutated_pdus_leave_dicomd_serving(dicomd, session):
    add_identity(session, "MODALITY1")
    assert echo_status(dicomd.port) == 0x0000
    workers = worker_pids(dicomd.process.pid)
    rss_before = {pid: rss_bytes(pid) for pid in workers}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(kind=st.sampled_from(["association_request", "p_data"]), data=st.data())
    def send_mutated_pdu(kind, data):
        if kind == "association_request":
            send_association_request(dicomd.port, data.draw(ASSOCIATION_REQUESTS))
        else:
            send_p_data(dicomd.port, data.draw(P_DATA))
        assert worker_pids(dicomd.process.pid) == workers, f"a worker exited:\n{dicomd.log()}"

    send_mutated_pdu()

    assert echo_status(dicomd.port) == 0x0000
    assert worker_pids(dicomd.process.pid) == workers
    for pid in workers:
        growth = rss_bytes(pid) - rss_before[pid]
        assert growth < RSS_GROWTH_LIMIT_BYTES, f"worker {pid} grew by {growth} bytes"
