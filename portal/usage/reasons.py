"""Plain-language explanations of the reasons dicomd records, with the fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Explanation:
    title: str
    meaning: str
    fix: str


REASONS: dict[str, Explanation] = {
    "unknown_calling_ae": Explanation(
        "Unknown calling AE title",
        "The device called with an AE title that no identity has. dicomd answered with "
        "A-ASSOCIATE-RJ, reason 3 (calling AE title not recognised).",
        "Compare the device's calling (local) AE title with the identities here, case and spaces "
        "included, then correct the device or create an identity with that AE title.",
    ),
    "identity_disabled": Explanation(
        "Identity disabled",
        "The AE title belongs to an identity that is disabled, so the device was rejected like an "
        "unknown one.",
        "Enable the identity on its configuration page if the device should send again.",
    ),
    "called_ae_mismatch": Explanation(
        "Wrong called AE title",
        "The device called this PACS by another AE title than the one it listens as. dicomd answered "
        "with A-ASSOCIATE-RJ, reason 7 (called AE title not recognised).",
        "On the device, set the remote (called) AE title of the PACS destination to the value shown "
        "in \"Connect this device\".",
    ),
    "tls_required": Explanation(
        "TLS required",
        "The device connected to the plain DICOM port, but its identity requires TLS.",
        "Configure the device for DICOM over TLS on the TLS port, or turn off Require TLS for the identity.",
    ),
    "client_certificate_required": Explanation(
        "Client certificate required",
        "The device connected over TLS without a client certificate, and the identity does not allow "
        "anonymous TLS.",
        "Install a client certificate on the device. Or, if the device cannot present one, turn on Allow "
        "anonymous TLS for the identity and remove any certificate bound to it: a bound certificate is "
        "always required.",
    ),
    "client_certificate_mismatch": Explanation(
        "Wrong client certificate",
        "The device presented a client certificate other than the one bound to its identity.",
        "Bind the device's current certificate to the identity, or install the bound certificate on the device.",
    ),
    "source_address_not_allowed": Explanation(
        "Address not allowed",
        "The device connected from an address outside the identity's allowed networks.",
        "Add the device's address to the identity's allowed networks, or connect the device from an allowed one.",
    ),
    "tls_handshake_failed": Explanation(
        "TLS handshake failed",
        "The TLS handshake failed before any DICOM message, so no AE title is known. The detail gives "
        "the TLS error.",
        "Check that the device trusts the PACS certificate authority, that its client certificate "
        "chains to the configured CA, and that it supports TLS 1.2 or newer.",
    ),
    "operation_not_permitted": Explanation(
        "Request type not permitted",
        "The device sent a request type its identity does not permit. It got DIMSE status 0x0124 "
        "(not authorized) and the association stayed open.",
        "Permit the request type on the identity's configuration page if the device needs it.",
    ),
    "invalid_dataset": Explanation(
        "Invalid dataset",
        "A C-STORE carried a dataset that could not be stored: missing or invalid UIDs, or data that "
        "could not be decoded. The device got a failure status.",
        "Check the device's export settings, and ask its vendor if the failure persists.",
    ),
    "storage_failed": Explanation(
        "Storage failed",
        "The PACS could not write the instance (for example, the storage volume is full). The device "
        "got status 0xA700 (out of resources) and should retry.",
        "Free space on or repair the storage volume; dicomd resumes by itself.",
    ),
    "transfer_interrupted": Explanation(
        "Transfer interrupted",
        "The association ended while a C-STORE data set was still arriving: the device aborted it, the "
        "connection closed or reset, or the device released the association in the middle of the data set. "
        "The partial data set was removed, the device got no status for it, and the detail names the SOP "
        "instance and how many bytes arrived.",
        "The device should send the instance again. If this repeats, check the network between the device "
        "and the PACS and the device's own timeouts.",
    ),
    "no_presentation_context": Explanation(
        "No presentation context accepted",
        "dicomd accepted the association but none of the presentation contexts the device proposed: "
        "each named a SOP class that dicomd does not store or serve, or offered only transfer syntaxes "
        "that dicomd does not accept. The device could send no request, and usually aborted. The detail "
        "lists each proposed SOP class with the reason it was rejected.",
        "dicomd stores every standard storage SOP class that pynetdicom lists, and the retired "
        "ultrasound classes. For a private SOP class, configure the device to send a standard one. For a "
        "transfer syntax rejection, let the device also offer Explicit or Implicit VR Little Endian.",
    ),
    "aborted_before_requests": Explanation(
        "Aborted before any request",
        "dicomd accepted the association, and it was aborted before the device sent a request. DCMTK's "
        "storescu, for example, aborts when no accepted presentation context fits the file it is about to "
        "send, and logs \"No presentation context for\" that file's SOP class. Its default list of proposed "
        "SOP classes leaves out some storage classes, such as the retired Ultrasound Image Storage. A "
        "cancelled send or a timeout on the device ends an association the same way, and so does dicomd "
        "when the device sends nothing for DICOM_NETWORK_TIMEOUT seconds.",
        "Look for the error the device logged before the abort. For a presentation context error, make the "
        "device propose the file's SOP class (storescu's -R option proposes the classes of the files it "
        "sends) with a transfer syntax that dicomd accepts.",
    ),
    "move_destination_unknown": Explanation(
        "Unknown C-MOVE destination",
        "The device asked to move instances to an AE title that is not an enabled identity with a "
        "retrieve address. It got status 0xA801 (Move Destination unknown).",
        "Create or enable the identity for the destination AE title and set its retrieve host and port, "
        "or correct the Move Destination on the device.",
    ),
    "move_destination_failed": Explanation(
        "C-MOVE destination unreachable",
        "dicomd could not open the association with the C-MOVE destination: the connection or the TLS "
        "handshake failed, or the destination rejected the association. The device got status 0xA702 with "
        "every instance counted and listed as failed. The detail gives the error.",
        "Check the destination identity's retrieve host and port and that the destination accepts this "
        "PACS's AE title. With Require TLS on, the destination must accept TLS on that port, trust the PACS "
        "CA, and present a certificate for the retrieve host that chains to DICOM_TLS_CLIENT_CA.",
    ),
    "invalid_identifier": Explanation(
        "Invalid query or retrieve identifier",
        "A C-FIND, C-GET or C-MOVE request carried an identifier that dicomd cannot process: a missing or "
        "unknown Query/Retrieve Level, or a retrieve without the unique key of its level, such as a STUDY "
        "level retrieve without Study Instance UID. The device got status 0xA900 with the error as Error "
        "Comment (0000,0902). The detail gives the error.",
        "Check the query/retrieve settings on the device: the information model, the level and the keys it "
        "sends. Ask its vendor if the device cannot be configured to send the unique key.",
    ),
    "sub_operations_failed": Explanation(
        "Retrieve sub-operations failed",
        "Some instances of a C-GET or C-MOVE could not be sent: their C-STORE sub-operations failed. The device "
        "got a final status of 0xB000 (some failed), 0xA702 (all failed) or 0xFE00 (cancelled) with the failed "
        "instances listed. The operations count them as get_sub_operations_failed or "
        "move_sub_operations_failed, and the detail gives the causes with one SOP instance each.",
        "A C-STORE status comes from the receiver: check its storage and its log. \"No presentation context\" "
        "means the receiver did not accept the instance's SOP class or transfer syntax. Any other error can "
        "come from a stored file that dicomd could not read: check the storage volume and dicomd's log.",
    ),
    "local_limit_exceeded": Explanation(
        "Too many associations",
        "The association limit was reached, so the device was rejected transiently (reason 2, local "
        "limit exceeded) and may retry.",
        "Raise the association limit, or lower how many associations the device opens at once.",
    ),
    "invalid_association_request": Explanation(
        "Invalid association request",
        "The connection ended before the PACS received an association request it could decode: a "
        "malformed or truncated PDU, an AE title that is empty or has invalid characters, or no request "
        "within the ACSE timeout. No AE title could be read, so the attempt is listed by peer address.",
        "Check the AE titles configured on the device at that address, and that it speaks DICOM to this port.",
    ),
}


def explain(reason: str | None) -> Explanation | None:
    return REASONS.get(reason) if reason else None
