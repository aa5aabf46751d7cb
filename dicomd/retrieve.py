"""C-GET and C-MOVE over stored instances, and the outgoing associations that C-MOVE and storage commitment open.

Stored files are sent as they were received, never re-encoded, so a peer
must accept the transfer syntax each instance was stored in.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext
from sqlalchemy.orm import Session

from dicomd.query import UNIQUE_KEYS, InvalidQuery, Query, image_record, instance_rows, match_identifier, parse_identifier
from dicomd.tls import MINIMUM_VERSIONS
from portal.certificates import resolve_tls_files
from portal.settings import Settings

log = logging.getLogger(__name__)

# pynetdicom (3.0) proposes at most this many presentation contexts on one association.
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
        placeholder = Dataset()
        placeholder.SOPClassUID = item.sop_class_uid
        placeholder.SOPInstanceUID = item.sop_instance_uid
        return placeholder


def stored_path(storage_dir: Path, relative_path: str) -> Path:
    """Return the absolute path of an indexed file; raise ValueError if it points outside the storage directory."""
    root = storage_dir.resolve()
    path = (root / relative_path).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"the indexed path {relative_path!r} is outside the storage directory")
    return path


def presentation_contexts(items: list[RetrieveItem]) -> list[PresentationContext]:
    """Return one context per SOP class, proposing each transfer syntax its instances were stored in.

    Raises ValueError when the instances need more contexts than an
    association can propose.
    """
    syntaxes: dict[str, list[str]] = {}
    for item in items:
        listed = syntaxes.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in listed:
            listed.append(item.transfer_syntax_uid)
    if len(syntaxes) > MAX_REQUESTED_CONTEXTS:
        raise ValueError(f"the instances have {len(syntaxes)} SOP classes; one association carries at most "
                         f"{MAX_REQUESTED_CONTEXTS}")
    return [build_context(sop_class, transfer_syntaxes) for sop_class, transfer_syntaxes in syntaxes.items()]


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
