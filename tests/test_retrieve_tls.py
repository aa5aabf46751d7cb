"""C-MOVE to a destination identity that requires TLS, with DCMTK's movescu as the requestor and storescp +tls as the destination.

dicomd presents its server certificate as the client certificate there, so
the generated one's extended key usage is tested here too.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portal.certificates import ensure_private_ca, ensure_server_pair, issue_client_certificate, load_ca
from tests.conftest import free_port
from tests.dicomd_process import add_identity, wait_for_end
from tests.qr_tools import dataset_bytes, final_move_response, movescu, running_storescp
from tests.test_query_retrieve import ALL_STUDIES, HEADERS, stored, stored_file  # noqa: F401
from tests.test_tls_dicomd import self_made_certificate, write_pair

ALL_INSTANCES = sorted(header.SOPInstanceUID for header in HEADERS.values())


def ca_signed_certificate(settings, common_name: str, *, addresses: tuple[str, ...] = ()):
    """Return a key and a serverAuth certificate signed by dicomd's private CA, naming `addresses` if any."""
    ca_cert, ca_key = load_ca(*ensure_private_ca(settings))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if addresses:
        names = [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def destination_pair(settings, directory: Path) -> tuple[Path, Path]:
    """Write the key and certificate of a destination at 127.0.0.1, signed by dicomd's private CA."""
    return write_pair(directory, "destination", *ca_signed_certificate(settings, "VIEWER1", addresses=("127.0.0.1",)))


def move_all_to_storescp(server, port: int, output: Path, log_path: Path, *storescp_options: str):
    """Run movescu -d for the three sample studies to VIEWER1 while storescp listens on `port` as VIEWER1."""
    with running_storescp(port, "VIEWER1", output, log_path, *storescp_options):
        return movescu(server.port, "WS1", "VIEWER1", ALL_STUDIES, "-d")


def extended_key_usage(cert_path: Path) -> list:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.mark.dcmtk
@pytest.mark.parametrize(("allow_anonymous_tls", "peer_authentication"),
                         [(False, "--require-peer-cert"), (True, "--ignore-peer-cert")],
                         ids=["client-certificate", "anonymous"])
def test_move_over_tls_byte_identical(stored, session, settings, tmp_path,  # noqa: F811
                                      allow_anonymous_tls, peer_authentication):
    port = free_port()
    add_identity(session, "VIEWER1", require_tls=True, allow_anonymous_tls=allow_anonymous_tls,
                 retrieve_host="127.0.0.1", retrieve_port=port)
    key_path, cert_path = destination_pair(settings, tmp_path)
    ca_path = ensure_private_ca(settings)[0]
    output = tmp_path / "moved"
    log_path = tmp_path / "storescp.log"

    result = move_all_to_storescp(stored, port, output, log_path,
                                  "+tls", str(key_path), str(cert_path), "+cf", str(ca_path), peer_authentication)

    assert result.returncode == 0, result.stderr + log_path.read_text()
    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0x0000")
    assert final["Completed Suboperations"] == "3"
    assert final["Failed Suboperations"] == "0"
    received = sorted(output.iterdir())
    assert len(received) == 3
    for header in HEADERS.values():
        [path] = [path for path in received if header.SOPInstanceUID in path.name]
        assert dataset_bytes(path) == dataset_bytes(stored_file(settings, header))
    assert "C-MOVE of 3 instances to VIEWER1 at 127.0.0.1" in stored.log()
    assert f"127.0.0.1:{port} over TLS" in stored.log()
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move": 1}
    assert rows[-1].reason is None


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("destination", "expected_errors"),
    [
        # storescp without TLS reads the TLS ClientHello as an unknown PDU
        # type and drops the connection, so dicomd's handshake ends in a reset or an EOF.
        ("plain", ("Connection reset by peer", "EOF")),
        # storescp trusts only another CA, so it rejects dicomd's certificate.
        ("other-client-ca", ("ALERT_UNKNOWN_CA",)),
        # storescp presents a certificate that dicomd's CA did not sign.
        ("other-server-ca", ("CERTIFICATE_VERIFY_FAILED",)),
    ],
)
def test_move_tls_handshake_fails(stored, session, settings, tmp_path, destination, expected_errors):  # noqa: F811
    port = free_port()
    add_identity(session, "VIEWER1", require_tls=True, retrieve_host="127.0.0.1", retrieve_port=port)
    key_path, cert_path = destination_pair(settings, tmp_path)
    other_key, other_cert = write_pair(tmp_path, "other", *self_made_certificate("VIEWER1"))
    ca_path = ensure_private_ca(settings)[0]
    storescp_options = {
        "plain": (),
        "other-client-ca": ("+tls", str(key_path), str(cert_path), "+cf", str(other_cert)),
        "other-server-ca": ("+tls", str(other_key), str(other_cert), "+cf", str(ca_path)),
    }[destination]
    output = tmp_path / "moved"

    result = move_all_to_storescp(stored, port, output, tmp_path / "storescp.log", *storescp_options)

    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0xa702"), result.stderr
    assert final["Completed Suboperations"] == "0"
    assert final["Failed Suboperations"] == "3"
    assert sorted(final["FailedSOPInstanceUIDList"].split("\\")) == ALL_INSTANCES
    assert list(output.iterdir()) == []
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move_destination_failed": 1}
    assert rows[-1].reason == "move_destination_failed"
    assert f"no association with VIEWER1 at 127.0.0.1:{port} over TLS: the TLS connection failed" in rows[-1].detail
    assert any(error in rows[-1].detail for error in expected_errors), rows[-1].detail


def test_generated_server_certificate_allows_client_auth(settings):
    cert_path, _ = ensure_server_pair(settings)

    assert extended_key_usage(cert_path) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_server_certificate_without_client_auth_replaced(settings):
    cert_path, key_path = ensure_server_pair(settings)
    key, server_only = ca_signed_certificate(settings, "PACS")
    write_pair(cert_path.parent, "server", key, server_only)

    replaced_cert, replaced_key = ensure_server_pair(settings)

    assert (replaced_cert, replaced_key) == (cert_path, key_path)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in extended_key_usage(cert_path)
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number != server_only.serial_number


@pytest.mark.dcmtk
def test_move_to_destination_with_issued_certificate(stored, session, settings, tmp_path):  # noqa: F811
    port = free_port()
    add_identity(session, "VIEWER1", require_tls=True, retrieve_host="127.0.0.1", retrieve_port=port)
    # What `portal identity certificate issue VIEWER1` issues for an identity with this retrieve address.
    key, certificate, _ = issue_client_certificate(settings, "VIEWER1", server_host="127.0.0.1")
    key_path, cert_path = write_pair(tmp_path, "issued", key, certificate)
    ca_path = ensure_private_ca(settings)[0]
    output = tmp_path / "moved"
    log_path = tmp_path / "storescp.log"

    result = move_all_to_storescp(stored, port, output, log_path,
                                  "+tls", str(key_path), str(cert_path), "+cf", str(ca_path), "--require-peer-cert")

    assert result.returncode == 0, result.stderr + log_path.read_text()
    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0x0000")
    assert final["Completed Suboperations"] == "3"
    assert len(list(output.iterdir())) == 3
