"""TLS settings and client certificates on the identity's configuration page and in the CLI."""

from __future__ import annotations

import io
import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from portal.certificates import fingerprint, issue_client_certificate, private_key_pem
from portal.models import AuditEvent, DicomIdentity
from tests.dicomd_process import add_identity, reload


def certificate_pem(*, days_valid: int = 100, days_ago: int = 1) -> tuple[bytes, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Echo cart 3")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=days_ago)).not_valid_after(now + timedelta(days=days_valid))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), certificate


def audit_actions(session) -> list[str]:
    session.expire_all()
    return [event.action for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


@pytest.mark.parametrize("setting", ["allow_anonymous_tls", "require_tls"])
def test_tls_toggle_without_javascript(admin_client, session, setting):
    identity = add_identity(session, "ECHO1")

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/tls", data={"setting": setting, "value": "true"})

    assert response.status_code == 302
    assert getattr(reload(session, identity), setting) is True
    assert audit_actions(session)[-1] == "identity.tls"


def test_tls_toggle_with_htmx_returns_card(admin_client, session):
    identity = add_identity(session, "ECHO1")

    response = admin_client.post(
        f"/settings/devices/dicom/{identity.id}/tls",
        data={"setting": "allow_anonymous_tls", "value": "true"},
        headers={"HX-Request": "true"},
    )

    assert response.status_code == 200
    assert response.text.lstrip().startswith("{#") or 'id="tls"' in response.text
    assert "Allow anonymous TLS:</strong> on" in response.text
    assert "<html" not in response.text
    assert "HX-Request" in response.headers["Vary"]


@pytest.mark.parametrize("data", [{"setting": "enabled", "value": "true"}, {"setting": "require_tls", "value": "yes"}])
def test_tls_toggle_rejects_bad_values(admin_client, session, data):
    identity = add_identity(session, "ECHO1")

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/tls", data=data)

    assert response.status_code == 400
    assert reload(session, identity).enabled is True


def test_show_page_has_tls_port_and_ca_download(admin_client, session, settings):
    identity = add_identity(session, "ECHO1")

    page = admin_client.get(f"/settings/devices/dicom/{identity.id}")
    ca = admin_client.get("/settings/devices/dicom/ca.pem")

    assert str(settings.dicom_tls_port) in page.text
    assert "/settings/devices/dicom/ca.pem" in page.text
    assert ca.status_code == 200
    assert x509.load_pem_x509_certificate(ca.data).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in ca.data


def test_pasted_certificate_is_bound_and_shown(admin_client, session):
    identity = add_identity(session, "ECHO1")
    pem, certificate = certificate_pem()

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate",
                                 data={"certificate_text": pem.decode()})

    assert response.status_code == 302
    identity = reload(session, identity)
    assert identity.client_certificate_fingerprint == fingerprint(certificate)
    assert identity.client_certificate_subject == "CN=Echo cart 3"
    page = admin_client.get(f"/settings/devices/dicom/{identity.id}").text
    assert "CN=Echo cart 3" in page
    assert fingerprint(certificate)[:2].upper() + ":" in page
    assert audit_actions(session)[-1] == "identity.certificate.bind"


def test_uploaded_der_certificate_is_bound(admin_client, session):
    identity = add_identity(session, "ECHO1")
    _, certificate = certificate_pem()
    der = certificate.public_bytes(serialization.Encoding.DER)

    response = admin_client.post(
        f"/settings/devices/dicom/{identity.id}/certificate",
        data={"certificate_file": (io.BytesIO(der), "device.der")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 302
    assert reload(session, identity).client_certificate_fingerprint == fingerprint(certificate)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello, this is not a certificate", "not an X.509 certificate"),
        ("", "no certificate was given"),
        (private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)).decode(), "private key"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be read"),
    ],
    ids=["garbage", "empty", "private-key", "broken-pem"],
)
def test_certificate_upload_rejects_bad_input(admin_client, session, text, message):
    identity = add_identity(session, "ECHO1")

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate", data={"certificate_text": text})

    assert response.status_code == 422
    assert message in response.text
    assert reload(session, identity).client_certificate_fingerprint is None


def test_expired_certificate_warns(admin_client, session):
    identity = add_identity(session, "ECHO1")
    pem, _ = certificate_pem(days_valid=-1, days_ago=30)

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate",
                                 data={"certificate_text": pem.decode()}, follow_redirects=True)

    assert response.status_code == 200
    assert "expired on" in response.text


def test_certificate_expiring_within_30_days_warns(admin_client, session):
    identity = add_identity(session, "ECHO1")
    pem, _ = certificate_pem(days_valid=10)

    admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate", data={"certificate_text": pem.decode()})
    page = admin_client.get(f"/settings/devices/dicom/{identity.id}").text

    assert "renew it on the device soon" in page


def test_certificate_bound_to_another_identity_rejected(admin_client, session):
    first = add_identity(session, "ECHO1")
    second = add_identity(session, "ECHO2")
    pem, _ = certificate_pem()
    admin_client.post(f"/settings/devices/dicom/{first.id}/certificate", data={"certificate_text": pem.decode()})

    response = admin_client.post(f"/settings/devices/dicom/{second.id}/certificate",
                                 data={"certificate_text": pem.decode()})

    assert response.status_code == 422
    assert "already bound to" in response.text


def test_issue_and_download_once(admin_client, session):
    identity = add_identity(session, "ECHO1")

    issued_page = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/issue")

    assert issued_page.status_code == 200
    assert issued_page.headers["Cache-Control"] == "no-store"
    token = issued_page.text.split('name="token" value="')[1].split('"')[0]
    password = issued_page.text.split('aria-label="Password"')[0].rsplit('value="', 1)[1].split('"')[0]
    url = f"/settings/devices/dicom/{identity.id}/certificate/download"
    p12 = admin_client.post(url, data={"token": token, "file_format": "p12"})
    pem = admin_client.post(url, data={"token": token, "file_format": "pem"})
    again = admin_client.post(url, data={"token": token, "file_format": "p12"})

    assert p12.status_code == 200
    key, certificate, extra = pkcs12.load_key_and_certificates(p12.data, password.encode())
    assert fingerprint(certificate) == reload(session, identity).client_certificate_fingerprint
    assert len(extra) == 1
    assert pem.status_code == 200
    assert b"ENCRYPTED PRIVATE KEY" in pem.data
    assert serialization.load_pem_private_key(pem.data, password.encode()) is not None
    assert again.status_code == 410
    assert "identity.certificate.issue" in audit_actions(session)


def test_download_with_forged_token_is_gone(admin_client, session):
    identity = add_identity(session, "ECHO1")

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/download",
                                 data={"token": "../../secret_key", "file_format": "pem"})

    assert response.status_code == 410


def test_remove_certificate(admin_client, session):
    identity = add_identity(session, "ECHO1")
    pem, _ = certificate_pem()
    admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate", data={"certificate_text": pem.decode()})

    unconfirmed = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/remove",
                                    follow_redirects=True)
    assert "Nothing changed: tick the box" in unconfirmed.get_data(as_text=True)
    assert reload(session, identity).client_certificate_fingerprint is not None

    response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/remove",
                                 data={"confirm": "yes"})

    assert response.status_code == 302
    assert reload(session, identity).client_certificate_fingerprint is None
    assert audit_actions(session)[-1] == "identity.certificate.remove"


def test_issue_over_bound_certificate_needs_confirmation(admin_client, session):
    identity = add_identity(session, "ECHO1")
    pem, _ = certificate_pem()
    admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate", data={"certificate_text": pem.decode()})
    bound = reload(session, identity).client_certificate_fingerprint

    for data in ({}, {"confirm": "no"}):
        response = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/issue", data=data,
                                     follow_redirects=True)
        assert "Nothing changed: tick the box" in response.get_data(as_text=True)
        assert reload(session, identity).client_certificate_fingerprint == bound

    page = admin_client.post(f"/settings/devices/dicom/{identity.id}/certificate/issue", data={"confirm": "yes"})
    assert page.status_code == 200
    assert reload(session, identity).client_certificate_fingerprint != bound


def test_support_user_cannot_change_tls(client, session):
    from tests.conftest import login

    identity = add_identity(session, "ECHO1")
    login(client, "support")

    response = client.post(f"/settings/devices/dicom/{identity.id}/tls", data={"setting": "require_tls", "value": "true"})

    assert response.status_code == 403
    assert reload(session, identity).require_tls is False


def test_cli_bind_and_remove(runner, session, tmp_path):
    add_identity(session, "ECHO1")
    pem, certificate = certificate_pem()
    path = tmp_path / "device.pem"
    path.write_bytes(pem)

    bound = runner.invoke(args=["identity", "certificate", "bind", "ECHO1", str(path)])
    session.expire_all()
    fingerprint_after_bind = session.scalar(select(DicomIdentity.client_certificate_fingerprint))
    removed = runner.invoke(args=["identity", "certificate", "remove", "ECHO1"])

    assert bound.exit_code == 0, bound.output
    assert fingerprint_after_bind == fingerprint(certificate)
    assert removed.exit_code == 0, removed.output


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"garbage", "not an X.509 certificate"), (b"-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n", "private key")],
)
def test_cli_bind_rejects_bad_file(runner, session, tmp_path, content, message):
    add_identity(session, "ECHO1")
    path = tmp_path / "device.pem"
    path.write_bytes(content)

    result = runner.invoke(args=["identity", "certificate", "bind", "ECHO1", str(path)])

    assert result.exit_code == 1
    assert message in result.output


def test_cli_issue_writes_files(runner, session, tmp_path, settings):
    add_identity(session, "ECHO1")

    result = runner.invoke(args=["identity", "certificate", "issue", "ECHO1", "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "ECHO1.p12").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN CERTIFICATE" in (tmp_path / "ECHO1.pem").read_bytes()


@pytest.mark.parametrize(
    "args",
    [
        ["identity", "certificate", "bind", "NOBODY", "/dev/null"],
        ["identity", "certificate", "issue", "ECHO1", "--out", "/nonexistent/dir"],
        ["identity", "update", "ECHO1", "--require-tls=maybe"],
    ],
)
def test_cli_tls_wrong_values(runner, session, args):
    add_identity(session, "ECHO1")

    result = runner.invoke(args=args)

    assert result.exit_code != 0
    assert reload(session, session.scalar(select(DicomIdentity))).require_tls is False


def test_client_ca_certificate_issued_by_private_ca(settings):
    key, certificate, ca_certificate = issue_client_certificate(settings, "ECHO1")

    assert certificate.issuer == ca_certificate.subject
    assert key.key_size == 2048


def issued_certificate(tmp_path, ae_title: str) -> x509.Certificate:
    pem = (tmp_path / f"{ae_title}.pem").read_bytes()
    return x509.load_pem_x509_certificates(pem[pem.index(b"-----BEGIN CERTIFICATE-----"):])[0]


def test_cli_issue_without_retrieve_address_is_client_only(runner, session, tmp_path):
    add_identity(session, "ECHO1")

    result = runner.invoke(args=["identity", "certificate", "issue", "ECHO1", "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    certificate = issued_certificate(tmp_path, "ECHO1")
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("workstation3.cardio.example", x509.DNSName("workstation3.cardio.example")),
    ],
)
def test_cli_issue_with_retrieve_address_serves_tls(runner, session, tmp_path, host, expected):
    add_identity(session, "WS3")
    runner.invoke(args=["identity", "update", "WS3", "--retrieve-host", host, "--retrieve-port", "11112"])

    result = runner.invoke(args=["identity", "certificate", "issue", "WS3", "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    certificate = issued_certificate(tmp_path, "WS3")
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, x509.oid.ExtendedKeyUsageOID.SERVER_AUTH}
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [expected]
