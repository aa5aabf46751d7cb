"""Allowed source networks enforced by a running dicomd, from several loopback addresses."""

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy.orm import Session

from portal.identities.service import update_identity
from tests.dicomd_process import add_identity, reload, wait_for_end

PEER_TIMEOUT_SECONDS = 10


def echo_from(source: str, port: int, calling: str = "ECHO1", server: str = "127.0.0.1") -> bool:
    """Send one C-ECHO from `source`; return whether the association was accepted."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = PEER_TIMEOUT_SECONDS
    ae.add_requested_context(Verification)
    family_bind = (source, 0, 0, 0) if ":" in source else (source, 0)
    association = ae.associate((server, port, 0, 0) if ":" in server else server, port, ae_title="PACS",
                               bind_address=family_bind)
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return status.Status == 0x0000


def set_networks(session: Session, identity, networks: list[str]) -> None:
    update_identity(session, reload(session, identity), allowed_networks=networks)
    session.commit()


def test_networks_change_while_running(dicomd, session):
    identity = add_identity(session, "ECHO1")
    assert echo_from("127.0.0.2", dicomd.port)

    set_networks(session, identity, ["127.0.0.2/32"])
    assert echo_from("127.0.0.2", dicomd.port)
    assert not echo_from("127.0.0.3", dicomd.port)

    set_networks(session, identity, ["127.0.0.0/30"])
    assert echo_from("127.0.0.3", dicomd.port)
    assert not echo_from("127.0.0.4", dicomd.port)

    set_networks(session, identity, [])
    assert echo_from("127.0.0.4", dicomd.port)

    rows = wait_for_end(session)
    outcomes = [(row.peer_address, row.outcome, row.reason) for row in rows]
    assert outcomes == [
        ("127.0.0.2", "accepted", None),
        ("127.0.0.2", "accepted", None),
        ("127.0.0.3", "rejected", "source_address_not_allowed"),
        ("127.0.0.3", "accepted", None),
        ("127.0.0.4", "rejected", "source_address_not_allowed"),
        ("127.0.0.4", "accepted", None),
    ]
    assert rows[2].detail == "127.0.0.3 is not in the allowed networks 127.0.0.2/32"
    assert rows[4].detail == "127.0.0.4 is not in the allowed networks 127.0.0.0/30"
    assert reload(session, identity).associations_rejected == 2


@pytest.fixture
def ipv6_environ(environ):
    return {**environ, "DICOM_HOST": "::1"}


@pytest.fixture
def dicomd_ipv6(app, ipv6_environ, tmp_path):
    from tests.dicomd_process import Dicomd, start_dicomd, stop_dicomd, wait_until_ready

    server = Dicomd(start_dicomd(ipv6_environ, tmp_path / "dicomd.log"), tmp_path / "dicomd.log",
                    int(ipv6_environ["DICOM_PORT"]), host="::1")
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_dicomd(server)


def test_ipv6_networks(dicomd_ipv6, session):
    identity = add_identity(session, "ECHO1", allowed_networks=["fd00::/64"])
    assert not echo_from("::1", dicomd_ipv6.port, server="::1")

    set_networks(session, identity, ["::1"])
    assert echo_from("::1", dicomd_ipv6.port, server="::1")

    rows = wait_for_end(session)
    assert [(row.peer_address, row.outcome, row.reason) for row in rows] == [
        ("::1", "rejected", "source_address_not_allowed"),
        ("::1", "accepted", None),
    ]
