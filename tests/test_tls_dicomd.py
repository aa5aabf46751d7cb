"""The DICOM TLS listener of a real `dicomd run`, with DCMTK's echoscu and storescu as the device."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from portal.certificates import (
    ensure_server_pair,
    fingerprint,
    issue_client_certificate,
    private_ca_paths,
    private_key_pem,
)
from portal.identities.tls import bind_certificate, issue_certificate, take_download
from portal.models import Instance
from tests.dicomd_process import TOOL_TIMEOUT_SECONDS, add_identity, associations, echoscu, wait_for_end
from tests.tools import dcmtk_environ, require_tool


def tls_tool(tool: str, port: int, calling: str, ca: Path, *options: str, files: tuple[Path, ...] = ()):
    command = require_tool(tool, "dcmtk")
    return subprocess.run(
        [command, "-v", *options, "+cf", str(ca), "-aet", calling, "-aec", "PACS", "127.0.0.1", str(port),
         *map(str, files)],
        env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS,
    )


def write_pair(directory: Path, name: str, key, certificate: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(private_key_pem(key))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def self_made_certificate(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Return a key and a self-signed certificate that chains to no CA dicomd trusts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10)).not_valid_after(now + timedelta(days=10))
    )
    return key, builder.sign(key, hashes.SHA256())


def expired_certificate_from_ca(settings, common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Return a key and an expired certificate signed by dicomd's private CA."""
    ca_cert_path, ca_key_path = private_ca_paths(settings)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30)).not_valid_after(now - timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


@pytest.fixture
def tls_port(environ) -> int:
    return int(environ["DICOM_TLS_PORT"])


@pytest.fixture
def ca_file(dicomd, settings) -> Path:
    return private_ca_paths(settings)[0]


@pytest.fixture
def device_pair(dicomd, settings, tmp_path):
    """A key and certificate for AE title TLS1 issued by dicomd's private CA, written as PEM files."""
    key, certificate, _ = issue_client_certificate(settings, "TLS1")
    return (*write_pair(tmp_path, "device", key, certificate), certificate)


@pytest.mark.dcmtk
@pytest.mark.parametrize(("allow", "reason"), [(True, None), (False, "client_certificate_required")])
def test_anonymous_tls_only_where_allowed(dicomd, session, tls_port, ca_file, allow, reason):
    add_identity(session, "ANON1", allow_anonymous_tls=allow)

    result = tls_tool("echoscu", tls_port, "ANON1", ca_file, "+tla")

    assert (result.returncode == 0) is allow, result.stdout + result.stderr
    [row] = wait_for_end(session)
    assert row.transport == "tls"
    assert row.reason == reason
    assert row.outcome == ("accepted" if allow else "rejected")
    assert row.client_certificate_subject == "anonymous"
    assert row.client_certificate_fingerprint is None
    assert row.tls_version in ("TLSv1.2", "TLSv1.3")
    assert row.tls_cipher
    if not allow:
        assert "Rejected Permanent" in result.stdout + result.stderr


@pytest.mark.dcmtk
def test_client_certificate_from_trusted_ca(dicomd, session, tls_port, ca_file, device_pair):
    add_identity(session, "TLS1")
    key_path, cert_path, certificate = device_pair

    result = tls_tool("echoscu", tls_port, "TLS1", ca_file, "+tls", str(key_path), str(cert_path))

    assert result.returncode == 0, result.stdout + result.stderr
    [row] = wait_for_end(session)
    assert row.outcome == "accepted"
    assert row.transport == "tls"
    assert row.local_port == tls_port
    assert row.client_certificate_subject == "CN=TLS1"
    assert row.client_certificate_fingerprint == fingerprint(certificate)
    assert row.operations == {"echo": 1}


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("make_certificate", "expected_words"),
    [
        (lambda settings: self_made_certificate("TLS1"), "not signed by a CA that this PACS trusts"),
        (lambda settings: expired_certificate_from_ca(settings, "TLS1"), "has expired"),
    ],
    ids=["other-ca", "expired"],
)
def test_untrusted_certificate_fails_handshake(dicomd, session, settings, tls_port, ca_file, tmp_path,
                                               make_certificate, expected_words):
    add_identity(session, "TLS1", allow_anonymous_tls=True)
    key_path, cert_path = write_pair(tmp_path, "bad", *make_certificate(settings))

    result = tls_tool("echoscu", tls_port, "TLS1", ca_file, "+tls", str(key_path), str(cert_path))

    assert result.returncode != 0
    [row] = wait_for_rows(session, 1)
    assert row.outcome == "rejected"
    assert row.reason == "tls_handshake_failed"
    assert row.peer_address == "127.0.0.1"
    assert row.calling_ae_title is None
    assert row.identity_id is None
    assert expected_words in row.detail
    assert "dicomd ready" in dicomd.log()


@pytest.mark.dcmtk
def test_certificate_bound_elsewhere_is_mismatch(dicomd, session, settings, tls_port, ca_file, device_pair):
    owner = add_identity(session, "OWNER1")
    add_identity(session, "TLS1")
    key_path, cert_path, certificate = device_pair
    bind_certificate(session, settings, owner, certificate.public_bytes(serialization.Encoding.PEM))
    session.commit()

    result = tls_tool("echoscu", tls_port, "TLS1", ca_file, "+tls", str(key_path), str(cert_path))

    assert result.returncode != 0
    [row] = wait_for_end(session)
    assert row.reason == "client_certificate_mismatch"
    assert row.calling_ae_title == "TLS1"
    assert row.client_certificate_fingerprint == fingerprint(certificate)


@pytest.mark.dcmtk
def test_bound_certificate_rejects_other_certificate(dicomd, session, settings, tls_port, ca_file, tmp_path):
    identity = add_identity(session, "TLS1")
    _, bound, _ = issue_client_certificate(settings, "TLS1")
    bind_certificate(session, settings, identity, bound.public_bytes(serialization.Encoding.PEM))
    session.commit()
    key, other, _ = issue_client_certificate(settings, "TLS1")
    key_path, cert_path = write_pair(tmp_path, "other", key, other)

    result = tls_tool("echoscu", tls_port, "TLS1", ca_file, "+tls", str(key_path), str(cert_path))

    assert result.returncode != 0
    [row] = wait_for_end(session)
    assert row.reason == "client_certificate_mismatch"


@pytest.mark.dcmtk
def test_require_tls_rejects_plain_port(dicomd, session, tls_port, ca_file):
    add_identity(session, "SECURE1", require_tls=True, allow_anonymous_tls=True)

    plain = echoscu(dicomd.port, "SECURE1")
    secure = tls_tool("echoscu", tls_port, "SECURE1", ca_file, "+tla")

    assert plain.returncode != 0
    assert secure.returncode == 0, secure.stdout + secure.stderr
    rows = wait_for_end(session)
    assert [(row.transport, row.reason) for row in rows] == [("plain", "tls_required"), ("tls", None)]


def test_tls_1_1_client_fails_and_is_recorded(dicomd, session, tls_port):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as error:
        pytest.skip(f"the local OpenSSL cannot offer TLS 1.1: {error}")

    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as connection:
        with pytest.raises(ssl.SSLError):
            client.wrap_socket(connection).close()

    rows = wait_for_rows(session, 1)
    assert rows[0].reason == "tls_handshake_failed"
    assert rows[0].peer_address == "127.0.0.1"
    # The client may fail before sending a TLS 1.1 hello when its own OpenSSL
    # rejects TLS 1.1. dicomd then records a closed connection instead.
    assert "older than TLS 1.2" in rows[0].detail or "closed the connection" in rows[0].detail


@pytest.mark.dcmtk
def test_store_over_tls_lands(dicomd, session, settings, tls_port, ca_file, device_pair):
    add_identity(session, "TLS1")
    key_path, cert_path, _ = device_pair
    sample = Path(get_testdata_file("CT_small.dcm"))

    result = tls_tool("storescu", tls_port, "TLS1", ca_file, "+tls", str(key_path), str(cert_path), files=(sample,))

    assert result.returncode == 0, result.stdout + result.stderr
    [row] = wait_for_end(session)
    assert row.instances_received == 1
    [instance] = session.scalars(select(Instance))
    stored = settings.storage_dir / instance.path
    assert stored.read_bytes()[128:132] == b"DICM"
    assert instance.association_id == row.id


@pytest.mark.dcmtk
def test_portal_issued_certificate_works_with_storescu(dicomd, session, settings, tls_port, ca_file, tmp_path):
    identity = add_identity(session, "ISSUED1")
    issued = issue_certificate(settings, identity)
    session.commit()
    bundle = tmp_path / "ISSUED1.pem"
    bundle.write_bytes(take_download(settings, issued.token, "pem"))
    sample = Path(get_testdata_file("MR_small.dcm"))

    result = tls_tool("storescu", tls_port, "ISSUED1", ca_file, "+tls", str(bundle), str(bundle),
                      "+pw", issued.password, files=(sample,))

    assert result.returncode == 0, result.stdout + result.stderr
    [row] = wait_for_end(session)
    assert row.outcome == "accepted"
    assert row.client_certificate_fingerprint == issued.info.fingerprint
    assert row.instances_received == 1


@pytest.mark.dcmtk
def test_silent_connection_does_not_delay_device(dicomd, session, tls_port, ca_file):
    add_identity(session, "ANON1", allow_anonymous_tls=True)

    with socket.create_connection(("127.0.0.1", tls_port)):
        started = time.monotonic()
        result = tls_tool("echoscu", tls_port, "ANON1", ca_file, "+tla")
        elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 5


@pytest.mark.dcmtk
def test_silent_connection_times_out_and_is_recorded(app, environ, tmp_path, session):
    from tests.dicomd_process import Dicomd, start_dicomd, wait_until_ready

    log_path = tmp_path / "dicomd-short.log"
    environ = {**environ, "DICOM_TLS_HANDSHAKE_TIMEOUT": "1"}
    server = Dicomd(start_dicomd(environ, log_path), log_path, int(environ["DICOM_PORT"]))
    try:
        wait_until_ready(server)
        with socket.create_connection(("127.0.0.1", int(environ["DICOM_TLS_PORT"]))):
            rows = wait_for_rows(session, 1, timeout=10)
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)

    assert rows[0].reason == "tls_handshake_failed"
    assert "within 1 seconds" in rows[0].detail


def test_sighup_reloads_server_certificate(dicomd, session, settings, tls_port):
    add_identity(session, "ANON1", allow_anonymous_tls=True)
    old_fingerprint = peer_certificate_fingerprint(tls_port)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(private_ca_paths(settings)[0])
    device = AE(ae_title="ANON1")
    device.add_requested_context(Verification)
    open_association = device.associate("127.0.0.1", tls_port, ae_title="PACS", tls_args=(client, None))
    assert open_association.is_established

    (settings.data_dir / "tls" / "server.key").unlink()
    (settings.data_dir / "tls" / "server.pem").unlink()
    ensure_server_pair(settings)
    os.kill(dicomd.process.pid, signal.SIGHUP)
    wait_for_log(dicomd, "TLS certificate files reloaded")

    assert peer_certificate_fingerprint(tls_port) != old_fingerprint
    status = open_association.send_c_echo()
    open_association.release()
    assert status.Status == 0x0000
    assert open_association.is_released


def wait_for_log(server, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in server.log()


def peer_certificate_fingerprint(port: int) -> str:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        with client.wrap_socket(connection) as tls_socket:
            return x509.load_der_x509_certificate(tls_socket.getpeercert(binary_form=True)).fingerprint(hashes.SHA256()).hex()


def wait_for_rows(session, count: int, timeout: float = 10):
    deadline = time.monotonic() + timeout
    rows = associations(session)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = associations(session)
    return rows
