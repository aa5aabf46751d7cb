"""C-GET and C-MOVE over stored instances, and the outgoing associations that C-MOVE and storage commitment open.

Stored files are sent in the transfer syntax they were received in. The one
exception is a compressed instance for a C-GET requestor that accepted its
SOP class only in uncompressed syntaxes, which gets the instance decompressed.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from sqlalchemy.orm import Session

from dicomd.query import UNIQUE_KEYS, InvalidQuery, Query, image_record, instance_rows, match_identifier, parse_identifier
from dicomd.tls import MINIMUM_VERSIONS
from portal.certificates import resolve_tls_files
from portal.settings import Settings

log = logging.getLogger(__name__)

# Presentation context IDs are odd numbers from 1 to 255 (PS3.8), so an
# association proposes at most 128 contexts, and pynetdicom (3.0) raises
# ValueError for more.
MAX_REQUESTED_CONTEXTS = 128


@dataclass(frozen=True)
class RemoteAE:
    """The destination of an outgoing association: a registered identity's AE title and retrieve address."""

    ae_title: str
    host: str
    port: int
    use_tls: bool


@dataclass(frozen=True)
class RetrieveItem:
    """One instance to send: its UIDs, stored transfer syntax and absolute path."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path


def parse_retrieve_identifier(identifier: Dataset, model: str) -> Query:
    """Decode a C-GET or C-MOVE identifier; only the unique keys of the level and the levels above are used.

    Raises InvalidQuery when the level is invalid or its unique key is
    missing, as PS3.4 C.4.2.2.1 requires it.
    """
    query = parse_identifier(identifier, model)
    if not query.matching.get(UNIQUE_KEYS[query.level]):
        raise InvalidQuery(f"a {query.level} level retrieve needs {UNIQUE_KEYS[query.level]}")
    levels = list(UNIQUE_KEYS)[: list(UNIQUE_KEYS).index(query.level) + 1]
    unique = {UNIQUE_KEYS[level]: query.matching[UNIQUE_KEYS[level]]
              for level in levels if UNIQUE_KEYS[level] in query.matching}
    return Query(level="IMAGE", matching=unique, requested=())


def find_instances(session: Session, query: Query, storage_dir: Path) -> list[RetrieveItem]:
    """Return the stored instances that a retrieve identifier selects."""
    items = []
    for study, instance in instance_rows(session, query):
        if not match_identifier(query, image_record(study, instance)):
            continue
        items.append(RetrieveItem(
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_instance_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            path=stored_path(storage_dir, instance.path),
        ))
    return items


def load_dataset(item: RetrieveItem) -> Dataset:
    """Read a stored instance for a C-STORE sub-operation, in the transfer syntax it was stored in.

    A file that cannot be read gives a data set with only its UIDs, so that the
    sub-operation fails and its SOP Instance UID is listed as failed.
    """
    # NOTE: pynetdicom (3.0) sends C-GET and C-MOVE sub-operations only from a
    # Dataset, so each instance is read whole into memory and encoded again.
    # pydicom writes an unmodified data set back unchanged in the same
    # transfer syntax, which the byte comparison tests check for sample files.
    try:
        return dcmread(item.path)
    except Exception as error:
        log.warning("reading the stored instance %s failed: %s", item.path, error)
        return unsendable_dataset(item.sop_class_uid, item.sop_instance_uid)


def unsendable_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """Return a data set with only the two UIDs, which pynetdicom counts and lists as a failed sub-operation.

    pynetdicom (3.0.4) cannot choose a presentation context for a data set
    without File Meta Information, so its C-STORE sub-operation fails.
    """
    placeholder = Dataset()
    placeholder.SOPClassUID = sop_class_uid
    placeholder.SOPInstanceUID = sop_instance_uid
    return placeholder


def dataset_to_send(dataset: Dataset, event: Event, association: object) -> Dataset:
    """Return the data set of a C-GET or C-MOVE sub-operation, decompressed if a C-GET requestor needs it.

    `association` names the requesting association in log lines.
    """
    if event.event != evt.EVT_C_GET:
        # NOTE: pynetdicom (3.0.4) opens the C-MOVE sub-association inside its
        # C-MOVE service and does not pass it to the handler, so the syntaxes
        # that the Move Destination accepted are unknown here. A C-MOVE sends
        # every instance as stored, and an instance whose stored syntax the
        # destination rejected fails.
        return dataset
    return decompress_for_peer(dataset, event.assoc.accepted_contexts, association)


def decompress_for_peer(dataset: Dataset, accepted_contexts: list[PresentationContext], association: object) -> Dataset:
    """Decompress `dataset` to Explicit VR Little Endian when the peer accepted its SOP class only uncompressed.

    pynetdicom (3.0.4) sends a data set in its own transfer syntax, or
    converts it between uncompressed little endian syntaxes, so Explicit VR
    Little Endian reaches a peer that accepted Implicit VR Little Endian too.
    A data set in an accepted syntax, or with no accepted uncompressed little
    endian syntax for its SOP class, is returned unchanged. When decoding
    fails, one line is logged and an `unsendable_dataset` is returned.
    """
    file_meta = getattr(dataset, "file_meta", None)
    stored_syntax = UID(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else UID("")
    # pydicom (3.0) raises ValueError from `is_compressed` for a UID it does not list as a transfer syntax.
    if not stored_syntax.is_transfer_syntax or not stored_syntax.is_compressed:
        return dataset

    # pynetdicom sends a C-STORE only on a context where this side has the SCU role.
    accepted_syntaxes = [context.transfer_syntax[0] for context in accepted_contexts
                         if context.abstract_syntax == dataset.get("SOPClassUID") and context.as_scu]
    if stored_syntax in accepted_syntaxes:
        return dataset
    if not any(is_uncompressed_little_endian(syntax) for syntax in accepted_syntaxes):
        return dataset

    # NOTE: the whole uncompressed pixel data is held in memory, about twice
    # over while pydicom (3.0) joins the decoded frames.
    try:
        # The SOP Instance UID is kept because the requestor retrieves this
        # instance, whatever transfer syntax carries it.
        dataset.decompress(generate_instance_uid=False)
    except Exception as error:
        # The decoder plugins raise many exception types for invalid data, and
        # one failed instance must not end the other sub-operations.
        log.warning(
            "%s: decompressing SOP instance %s from %s for a peer that accepted only %s failed, so it was not sent: %s",
            association, dataset.get("SOPInstanceUID"), stored_syntax.name,
            ", ".join(UID(syntax).name for syntax in accepted_syntaxes), " ".join(str(error).split()),
        )
        return unsendable_dataset(dataset.get("SOPClassUID"), dataset.get("SOPInstanceUID"))
    log.info("%s: SOP instance %s decompressed from %s for the peer", association, dataset.SOPInstanceUID,
             stored_syntax.name)
    return dataset


def is_uncompressed_little_endian(syntax: str) -> bool:
    """Return whether pynetdicom (3.0.4) can convert an Explicit VR Little Endian data set into `syntax`."""
    syntax = UID(syntax)
    return syntax.is_transfer_syntax and not syntax.is_compressed and syntax.is_little_endian


def stored_path(storage_dir: Path, relative_path: str) -> Path:
    """Return the absolute path of an indexed file; raise ValueError if it points outside the storage directory."""
    root = storage_dir.resolve()
    path = (root / relative_path).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"the indexed path {relative_path!r} is outside the storage directory")
    return path


def presentation_contexts(items: list[RetrieveItem]) -> list[PresentationContext]:
    """Return one presentation context per (SOP class, stored transfer syntax) pair of the instances.

    A peer accepts at most one transfer syntax per context, so instances of
    one SOP class stored in several syntaxes each need a context of their own.
    pynetdicom then sends each instance on the context of its own syntax.
    """
    pairs = Counter((item.sop_class_uid, item.transfer_syntax_uid) for item in items)
    proposed = list(pairs)
    if len(pairs) > MAX_REQUESTED_CONTEXTS:
        # NOTE: only the pairs with the most instances get a context. pynetdicom
        # (3.0.4) sends an instance of another pair only by converting it to an
        # accepted uncompressed syntax of its SOP class, so most of them fail
        # and are listed as failed. A narrower request then retrieves them.
        proposed = [pair for pair, _ in pairs.most_common(MAX_REQUESTED_CONTEXTS)]
        left_out = len(items) - sum(pairs[pair] for pair in proposed)
        log.warning("%d instances get no presentation context of their own and may fail, because the instances "
                    "need %d (one per SOP class and transfer syntax) and an association proposes at most %d. "
                    "Retrieve them with a narrower request.", left_out, len(pairs), MAX_REQUESTED_CONTEXTS)
    return [build_context(sop_class, transfer_syntax) for sop_class, transfer_syntax in proposed]


def association_options(remote: RemoteAE, settings: Settings, tls_errors: list[OSError] | None = None) -> dict:
    """Return the `AE.associate` keyword arguments for an outgoing association to `remote`.

    With `tls_errors`, the association's TLS socket appends each error of its
    handshake and reads to that list, because pynetdicom (3.0) only logs why
    an outgoing association failed.
    """
    options: dict = {"ae_title": remote.ae_title}
    if remote.use_tls:
        context = client_tls_context(settings)
        if tls_errors is not None:
            context.sslsocket_class = ErrorNotingSSLSocket
            context.noted_errors = tls_errors
        options["tls_args"] = (context, remote.host)
    return options


class ErrorNotingSSLSocket(ssl.SSLSocket):
    """A client TLS socket that appends the errors of its handshake and reads to its context's `noted_errors`."""

    def connect(self, address) -> None:
        try:
            super().connect(address)
        except OSError as error:
            self.context.noted_errors.append(error)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        # With TLS 1.3 the client's handshake ends before the server has
        # checked the client certificate, so a rejected certificate shows up
        # as an alert on the first read. Only TLS errors are noted, because
        # the socket also reads once before it is connected, expecting ENOTCONN.
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as error:
            self.context.noted_errors.append(error)
            raise


def client_tls_context(settings: Settings) -> ssl.SSLContext:
    """Return a client SSLContext that trusts the PACS's CA bundle and presents the server certificate.

    The destination's certificate must chain to `DICOM_TLS_CLIENT_CA` (the
    private CA by default) and name the destination's retrieve host.
    """
    files = resolve_tls_files(settings)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.client_ca))
    context.minimum_version = MINIMUM_VERSIONS[settings.dicom_tls_min_version]
    context.load_cert_chain(files.cert, files.key)
    return context
