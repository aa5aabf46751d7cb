"""Association and operation policy, without sockets or a database."""

from dataclasses import replace

import pytest

from dicomd.policy import (
    DIAGNOSTIC_CALLED_AE_NOT_RECOGNIZED,
    DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED,
    DIAGNOSTIC_NO_REASON_GIVEN,
    RESULT_REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    IdentityPolicy,
    RejectReason,
    Transport,
    ae_titles_match,
    decide_association,
    is_operation_permitted,
)

OWN_AE_TITLE = "PACS"


def identity(ae_title="ECHO1", *, enabled=True, require_tls=False, permitted=("echo", "store"), networks=()):
    return IdentityPolicy(
        identity_id=1,
        ae_title=ae_title,
        enabled=enabled,
        require_tls=require_tls,
        permitted=frozenset(permitted),
        allowed_networks=tuple(networks),
    )


@pytest.mark.parametrize(
    ("calling", "called", "registered", "transport", "reason", "diagnostic"),
    [
        ("ECHO1", "PACS", identity(), Transport.PLAIN, None, None),
        ("ECHO1  ", "  PACS ", identity(), Transport.PLAIN, None, None),
        ("ECHO1", "PACS", None, Transport.PLAIN, RejectReason.UNKNOWN_CALLING_AE, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED),
        ("echo1", "PACS", identity(), Transport.PLAIN, RejectReason.UNKNOWN_CALLING_AE, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED),
        ("ECHO1", "PACS", identity(enabled=False), Transport.PLAIN,
         RejectReason.IDENTITY_DISABLED, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED),
        ("ECHO1", "OTHER", identity(), Transport.PLAIN, RejectReason.CALLED_AE_MISMATCH, DIAGNOSTIC_CALLED_AE_NOT_RECOGNIZED),
        ("ECHO1", "pacs", identity(), Transport.PLAIN, RejectReason.CALLED_AE_MISMATCH, DIAGNOSTIC_CALLED_AE_NOT_RECOGNIZED),
        ("ECHO1", "PACS", identity(require_tls=True), Transport.PLAIN, RejectReason.TLS_REQUIRED, DIAGNOSTIC_NO_REASON_GIVEN),
        ("ECHO1", "PACS", replace(identity(require_tls=True), allow_anonymous_tls=True), Transport.TLS, None, None),
        # A disabled identity is reported as disabled even when the called AE title is also wrong.
        ("ECHO1", "OTHER", identity(enabled=False), Transport.PLAIN,
         RejectReason.IDENTITY_DISABLED, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED),
    ],
)
def test_decide_association(calling, called, registered, transport, reason, diagnostic):
    rejection = decide_association(
        calling_ae_title=calling,
        called_ae_title=called,
        own_ae_title=OWN_AE_TITLE,
        identity=registered,
        transport=transport,
        peer_address="127.0.0.1",
    )

    if reason is None:
        assert rejection is None
        return
    assert rejection is not None
    assert rejection.reason is reason
    assert rejection.result == RESULT_REJECTED_PERMANENT
    assert rejection.source == SOURCE_SERVICE_USER
    assert rejection.diagnostic == diagnostic


@pytest.mark.parametrize(
    ("received", "expected", "match"),
    [
        ("PACS", "PACS", True),
        (" PACS  ", "PACS", True),
        ("PACS", "pacs", False),
        ("PA CS", "PACS", False),
        ("PACS1", "PACS", False),
    ],
)
def test_ae_titles_match(received, expected, match):
    assert ae_titles_match(received, expected) is match


@pytest.mark.parametrize(
    ("permitted", "operation", "allowed"),
    [
        (("echo", "store"), "echo", True),
        (("echo", "store"), "store", True),
        (("echo",), "store", False),
        (("store",), "echo", False),
        ((), "echo", False),
    ],
)
def test_operation_permitted(permitted, operation, allowed):
    assert is_operation_permitted(identity(permitted=permitted), operation) is allowed


@pytest.mark.parametrize(
    ("networks", "peer", "allowed"),
    [
        ((), "192.0.2.7", True),
        (("10.1.4.23/32",), "10.1.4.23", True),
        (("10.1.4.23/32",), "10.1.4.24", False),
        (("10.1.4.0/24",), "10.1.4.200", True),
        (("10.1.4.0/24",), "10.1.5.1", False),
        (("10.1.4.0/24",), "::ffff:10.1.4.9", True),
        (("fd00::/64",), "fd00::1", True),
        (("fd00::/64",), "fd00:0:0:1::1", False),
        (("10.1.4.0/24", "fd00::/64"), "fd00::abcd", True),
        (("127.0.0.2/32",), "not-an-address", False),
    ],
)
def test_source_networks(networks, peer, allowed):
    rejection = decide_association(
        calling_ae_title="ECHO1", called_ae_title="PACS", own_ae_title=OWN_AE_TITLE,
        identity=identity(networks=networks), transport=Transport.PLAIN, peer_address=peer,
    )
    if allowed:
        assert rejection is None
        return
    assert rejection.reason is RejectReason.SOURCE_ADDRESS_NOT_ALLOWED
    assert rejection.result == RESULT_REJECTED_PERMANENT
    assert rejection.diagnostic == DIAGNOSTIC_NO_REASON_GIVEN
    assert rejection.detail == f"{peer} is not in the allowed networks {', '.join(networks)}"


def tls_identity(*, allow_anonymous_tls=False, bound=None):
    return IdentityPolicy(
        identity_id=1,
        ae_title="ECHO1",
        enabled=True,
        require_tls=False,
        permitted=frozenset(("echo",)),
        allow_anonymous_tls=allow_anonymous_tls,
        client_certificate_fingerprint=bound,
    )


@pytest.mark.parametrize(
    ("registered", "presented", "owner", "reason"),
    [
        (tls_identity(), None, None, RejectReason.CLIENT_CERTIFICATE_REQUIRED),
        (tls_identity(allow_anonymous_tls=True), None, None, None),
        (tls_identity(allow_anonymous_tls=True, bound="aa"), None, None, RejectReason.CLIENT_CERTIFICATE_REQUIRED),
        (tls_identity(), "aa", None, None),
        (tls_identity(bound="aa"), "aa", 1, None),
        (tls_identity(bound="aa"), "bb", None, RejectReason.CLIENT_CERTIFICATE_MISMATCH),
        (tls_identity(), "bb", 2, RejectReason.CLIENT_CERTIFICATE_MISMATCH),
    ],
)
def test_client_certificate_rules(registered, presented, owner, reason):
    rejection = decide_association(
        calling_ae_title="ECHO1",
        called_ae_title=OWN_AE_TITLE,
        own_ae_title=OWN_AE_TITLE,
        identity=registered,
        transport=Transport.TLS,
        peer_address="127.0.0.1",
        client_certificate_fingerprint=presented,
        certificate_owner_id=owner,
    )
    assert (rejection.reason if rejection else None) == reason
    if rejection:
        assert rejection.diagnostic == DIAGNOSTIC_NO_REASON_GIVEN
