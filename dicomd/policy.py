"""Association and operation policy: which device may do what, over which transport.

Plain functions over plain values, so that every rule is tested without a
socket or a database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from portal.networks import address_allowed

# A-ASSOCIATE-RJ result, source and reason values (the A-ASSOCIATE-RJ PDU of PS3.8).
RESULT_REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAGNOSTIC_NO_REASON_GIVEN = 0x01
DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED = 0x03
DIAGNOSTIC_CALLED_AE_NOT_RECOGNIZED = 0x07


class Transport(str, enum.Enum):
    """The transport of an association, as recorded in `Association.transport`."""

    PLAIN = "plain"
    TLS = "tls"


class RejectReason(str, enum.Enum):
    """The reason for a rejection, as recorded in `Association.reason`."""

    UNKNOWN_CALLING_AE = "unknown_calling_ae"
    IDENTITY_DISABLED = "identity_disabled"
    CALLED_AE_MISMATCH = "called_ae_mismatch"
    TLS_REQUIRED = "tls_required"
    SOURCE_ADDRESS_NOT_ALLOWED = "source_address_not_allowed"
    CLIENT_CERTIFICATE_REQUIRED = "client_certificate_required"
    CLIENT_CERTIFICATE_MISMATCH = "client_certificate_mismatch"
    # Recorded by the TLS listener itself: no A-ASSOCIATE-RQ was ever read.
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    # Too many associations open, over this dicomd or for the identity.
    LOCAL_LIMIT_EXCEEDED = "local_limit_exceeded"
    # Recorded from connection events: the connection ended before dicomd saw
    # a decodable A-ASSOCIATE-RQ (a malformed PDU, an undecodable AE title,
    # or no request within the ACSE timeout).
    INVALID_ASSOCIATION_REQUEST = "invalid_association_request"


@dataclass(frozen=True)
class IdentityPolicy:
    """The fields of a DICOM identity that decide what its device may do."""

    identity_id: int
    ae_title: str
    enabled: bool
    require_tls: bool
    permitted: frozenset[str]
    allowed_networks: tuple[str, ...] = ()
    allow_anonymous_tls: bool = False
    # SHA-256 fingerprint (lower-case hex) of the bound client certificate, if any.
    client_certificate_fingerprint: str | None = None

    @classmethod
    def of(cls, identity) -> IdentityPolicy:
        """Copy the policy fields out of a `portal.models.DicomIdentity` object or a row of its columns."""
        return cls(
            identity_id=identity.id,
            ae_title=identity.ae_title,
            enabled=identity.enabled,
            require_tls=identity.require_tls,
            permitted=frozenset(identity.permitted or ()),
            allowed_networks=tuple(identity.allowed_networks or ()),
            allow_anonymous_tls=identity.allow_anonymous_tls,
            client_certificate_fingerprint=identity.client_certificate_fingerprint,
        )


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send and the reason to record for it."""

    reason: RejectReason
    result: int
    source: int
    diagnostic: int
    detail: str | None = None


def ae_titles_match(received: str, expected: str) -> bool:
    """Compare two AE titles as PS3.5 does: padding spaces aside, case included."""
    return received.strip(" ") == expected.strip(" ")


def decide_association(
    *,
    calling_ae_title: str,
    called_ae_title: str,
    own_ae_title: str,
    identity: IdentityPolicy | None,
    transport: Transport,
    peer_address: str,
    client_certificate_fingerprint: str | None = None,
    certificate_owner_id: int | None = None,
) -> Rejection | None:
    """Return the rejection for an association request, or None to accept it.

    The calling identity is checked first, so that a request from a known
    device with a wrong called AE title is recorded against that device.
    `client_certificate_fingerprint` is the SHA-256 fingerprint of the
    certificate presented over TLS (None without one), and
    `certificate_owner_id` the id of the identity that certificate is bound to.
    """
    if identity is None or not ae_titles_match(calling_ae_title, identity.ae_title):
        return _reject(RejectReason.UNKNOWN_CALLING_AE, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED)

    if not identity.enabled:
        return _reject(RejectReason.IDENTITY_DISABLED, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED)

    if not ae_titles_match(called_ae_title, own_ae_title):
        return _reject(RejectReason.CALLED_AE_MISMATCH, DIAGNOSTIC_CALLED_AE_NOT_RECOGNIZED)

    if not address_allowed(peer_address, identity.allowed_networks):
        detail = f"{peer_address} is not in the allowed networks {', '.join(identity.allowed_networks)}"
        return _reject(RejectReason.SOURCE_ADDRESS_NOT_ALLOWED, DIAGNOSTIC_NO_REASON_GIVEN, detail)

    if identity.require_tls and transport is not Transport.TLS:
        return _reject(RejectReason.TLS_REQUIRED, DIAGNOSTIC_NO_REASON_GIVEN)

    if transport is Transport.TLS:
        return decide_client_certificate(identity, client_certificate_fingerprint, certificate_owner_id)

    return None


def decide_client_certificate(
    identity: IdentityPolicy,
    client_certificate_fingerprint: str | None,
    certificate_owner_id: int | None,
) -> Rejection | None:
    """Return the rejection for the client certificate of a TLS association, or None to accept it.

    Without a certificate, the identity must allow anonymous TLS and have no
    certificate bound. With one, it must be the bound certificate, and a
    certificate bound to another identity is never accepted.
    """
    if client_certificate_fingerprint is None:
        if identity.client_certificate_fingerprint is not None or not identity.allow_anonymous_tls:
            return _reject(RejectReason.CLIENT_CERTIFICATE_REQUIRED, DIAGNOSTIC_NO_REASON_GIVEN)
        return None

    bound = identity.client_certificate_fingerprint
    if bound is not None and bound != client_certificate_fingerprint:
        return _reject(RejectReason.CLIENT_CERTIFICATE_MISMATCH, DIAGNOSTIC_NO_REASON_GIVEN)
    if certificate_owner_id is not None and certificate_owner_id != identity.identity_id:
        return _reject(RejectReason.CLIENT_CERTIFICATE_MISMATCH, DIAGNOSTIC_NO_REASON_GIVEN)
    return None


def is_operation_permitted(identity: IdentityPolicy, operation: str) -> bool:
    """Return whether the identity may send the DIMSE request type `operation` (e.g. "store")."""
    return operation in identity.permitted


def _reject(reason: RejectReason, diagnostic: int, detail: str | None = None) -> Rejection:
    return Rejection(
        reason=reason,
        result=RESULT_REJECTED_PERMANENT,
        source=SOURCE_SERVICE_USER,
        diagnostic=diagnostic,
        detail=detail,
    )
