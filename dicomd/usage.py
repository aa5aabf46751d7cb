"""Usage records: one Association row per attempt, the index of stored instances, identity counters.

Counters are updated with SQL increments (`SET x = x + :n`), never read and
written back, because several worker processes update the same identity.
Each method runs one short transaction on the process's single engine;
instances stored at the same moment share one (dicomd.group_commit).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from types import SimpleNamespace

from sqlalchemy import Connection, Dialect, Engine, bindparam, insert, select, update
from sqlalchemy.orm import Session

from dicomd.driver_sql import DriverStatement
from dicomd.group_commit import GroupCommit, commit_unflushed
from dicomd.policy import IdentityPolicy, RejectReason, Rejection, Transport
from dicomd.retrieve import RemoteAE
from dicomd.storage import StoredInstance
from dicomd.tls import TlsSession
from portal.identity_lookup import find_by_ae_title, stored_ae_title
from portal.database import upsert
from portal.usage_days import add_usage_statement, request_increments
from portal.models import Association, DicomIdentity, Instance, Study, utcnow

log = logging.getLogger(__name__)

OUTCOME_ACCEPTED = "accepted"
OUTCOME_REJECTED = "rejected"
OUTCOME_ABORTED = "aborted"


@dataclass(frozen=True)
class Peer:
    """The peer address of an association request and the listener that received it."""

    address: str
    port: int | None
    local_port: int | None
    transport: Transport
    # What the TLS handshake negotiated; None on the plain listener.
    tls: TlsSession | None = None


def fit_text(column, value):
    """Cut a text value to the length of its column.

    Header values may be longer than the index columns (Patient's Name, for
    one, has up to five components), and PostgreSQL rejects an overlong value
    where SQLite would store it.
    """
    return _cut(value, getattr(column.type, "length", None))


def fitted_values(model, **values) -> dict:
    """Return `values` for a `model` row with every text value cut to its column's length."""
    lengths = _column_lengths(model)
    return {name: _cut(value, lengths[name]) for name, value in values.items()}


def _cut(value, length: int | None):
    if isinstance(value, str) and length is not None and len(value) > length:
        return value[:length]
    return value


@functools.cache
def _column_lengths(model) -> dict[str, int | None]:
    """Return the length of each of `model`'s columns: None where a column's values have none."""
    return {column.key: getattr(column.type, "length", None) for column in model.__table__.columns}


def fitted(model, **values):
    """Build a `model` row with every text value cut to its column's length."""
    return model(**fitted_values(model, **values))


# The columns of the identity with an AE title, as IdentityPolicy.of() reads them.
IDENTITY_POLICY_QUERY = select(
    *(
        DicomIdentity.__table__.c[name]
        for name in ("id", "ae_title", "enabled", "require_tls", "permitted", "allowed_networks",
                     "allow_anonymous_tls", "client_certificate_fingerprint")
    )
).where(DicomIdentity.__table__.c.ae_title == bindparam("ae_title"))


class UsageRecorder:
    """Writes association attempts, stored instances and identity counters."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._index_writes = GroupCommit(engine)

    def close(self) -> None:
        """Close the connection that index writes keep; call it before disposing of the engine."""
        self._index_writes.close()

    def load_identity(self, calling_ae_title: str) -> IdentityPolicy | None:
        """Read the identity registered for `calling_ae_title` now, so that portal changes apply at once.

        This runs for every request, so it reads only the policy's columns, on the driver's cursor.
        """
        statement = association_statements(self.engine.dialect).load_identity
        with self.engine.connect() as connection:
            identity = statement.first(connection, {"ae_title": stored_ae_title(calling_ae_title)})
        return IdentityPolicy.of(SimpleNamespace(**identity)) if identity is not None else None

    def load_remote_ae(self, ae_title: str) -> RemoteAE | None:
        """Return where to reach the identity with `ae_title`: None unless it is enabled and has a retrieve address."""
        with Session(self.engine) as session:
            identity = find_by_ae_title(session, ae_title)
            if identity is None or not identity.enabled:
                return None
            if not identity.retrieve_host or not identity.retrieve_port:
                return None
            return RemoteAE(
                ae_title=identity.ae_title,
                host=identity.retrieve_host,
                port=identity.retrieve_port,
                use_tls=identity.require_tls,
            )

    def find_certificate_owner(self, fingerprint: str | None) -> int | None:
        """Return the id of the identity that the client certificate with `fingerprint` is bound to, if any."""
        if fingerprint is None:
            return None
        with Session(self.engine) as session:
            return session.scalar(
                select(DicomIdentity.id).where(DicomIdentity.client_certificate_fingerprint == fingerprint)
            )

    def record_request(
        self,
        *,
        calling_ae_title: str,
        called_ae_title: str,
        peer: Peer,
        identity: IdentityPolicy | None,
        rejection: Rejection | None,
    ) -> int:
        """Insert the Association row for a request and count it on the identity; return the row id."""
        now = utcnow()
        values = dict(
            started_at=now,
            ended_at=now if rejection else None,
            identity_id=identity.identity_id if identity else None,
            calling_ae_title=calling_ae_title,
            called_ae_title=called_ae_title,
            peer_address=peer.address,
            peer_port=peer.port,
            transport=peer.transport.value,
            local_port=peer.local_port,
            outcome=OUTCOME_REJECTED if rejection else OUTCOME_ACCEPTED,
            reason=rejection.reason.value if rejection else None,
            detail=rejection.detail if rejection else None,
            operations={},
            **_tls_columns(peer.tls),
        )
        statements = association_statements(self.engine.dialect)
        with self._log_transaction() as connection:
            association_id = statements.insert_association.execute(connection, values).fetchone()[0]
            if identity is not None:
                counter = "associations_rejected" if rejection else "associations_accepted"
                count = statements.count_rejected if rejection else statements.count_accepted
                count.execute(connection, {"row_id": identity.identity_id, "now": now, "peer_address": peer.address,
                                           "transport": peer.transport.value})
                _add_usage(connection, identity.identity_id, now.date(), {counter: 1})
        return association_id

    def record_handshake_failure(self, peer: Peer, detail: str) -> int:
        """Insert the rejected Association row of a failed TLS handshake: no AE titles, no identity."""
        return self.record_connection_failure(peer, RejectReason.TLS_HANDSHAKE_FAILED, detail)

    def record_connection_failure(self, peer: Peer, reason: RejectReason, detail: str,
                                  started_at: datetime | None = None) -> int:
        """Insert a rejected Association row for a connection that never reached the policy: no AE titles, no identity."""
        now = utcnow()
        association = Association(
            started_at=started_at or now,
            ended_at=now,
            peer_address=peer.address,
            peer_port=peer.port,
            transport=peer.transport.value,
            local_port=peer.local_port,
            outcome=OUTCOME_REJECTED,
            reason=reason.value,
            detail=detail,
            operations={},
            **_tls_columns(peer.tls),
        )
        with Session(self.engine) as session, session.begin():
            session.add(association)
            session.flush()
            return association.id

    def record_failure(self, association_id: int, reason: str, detail: str) -> None:
        """Note a failed request on an accepted association; the first reason is kept.

        `detail` becomes a new line of the association's detail unless that
        line is there already, so repeated failures of one kind show once.
        """
        with Session(self.engine) as session, session.begin():
            association = session.get(Association, association_id)
            if association is None:
                return
            if association.reason is None:
                association.reason = reason
            if not association.detail:
                association.detail = detail
            elif detail not in association.detail.split("\n"):
                association.detail = f"{association.detail}\n{detail}"

    def record_instance(
        self,
        *,
        association_id: int,
        identity_id: int,
        stored: StoredInstance,
    ) -> None:
        """Index a stored instance and count it on the association and the identity.

        A duplicate whose index rows already exist only adds to the counters.
        A duplicate without them, because a crash came between the write and the
        index, gets them now.
        """
        now = utcnow()
        statements = index_statements(self.engine.dialect)

        # Statements compiled once and run on the driver's cursor, because this
        # runs for every instance and SQLAlchemy's execution costs more than the SQL.
        def index(connection: Connection) -> None:
            study_id = self._upsert_study(connection, statements, identity_id, stored, now)
            self._insert_instance(connection, statements, association_id, identity_id, study_id, stored, now)
            statements.count_on_association.execute(
                connection, {"row_id": association_id, "added_bytes": stored.size_bytes}
            )
            statements.count_on_identity.execute(
                connection, {"row_id": identity_id, "added_bytes": stored.size_bytes, "now": now}
            )
            statements.add_usage.execute(
                connection,
                {"identity_id": identity_id, "day": now.date(), "instances_received": 1,
                 "bytes_received": stored.size_bytes},
            )

        # Instances that other associations of this worker store at the same moment share the transaction.
        self._index_writes.write(index)

    def record_end(self, association_id: int, *, operations: Mapping[str, int], aborted: bool) -> None:
        """Close an accepted association's row with its end time and operation counts."""
        now = utcnow()
        values = {
            "row_id": association_id,
            "ended_at": now,
            "outcome": OUTCOME_ABORTED if aborted else OUTCOME_ACCEPTED,
            "operations": dict(operations),
        }
        with self._log_transaction() as connection:
            closed = association_statements(self.engine.dialect).close_association.first(connection, values)
            # The identity may have been deleted during the association.
            if closed is not None and closed["identity_id"] is not None:
                _add_usage(connection, closed["identity_id"], now.date(), request_increments(dict(operations)))

    def record_lost(self, association_ids: list[int], detail: str) -> None:
        """Close the rows of associations whose worker process died: aborted, with `detail`."""
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Association)
                .where(Association.id.in_(association_ids), Association.ended_at.is_(None))
                .values(ended_at=now, outcome=OUTCOME_ABORTED, detail=detail),
                execution_options={"synchronize_session": False},
            )

    @contextmanager
    def _log_transaction(self) -> Iterator[Connection]:
        """Run a transaction of the connection log whose commit does not wait for the disk.

        Every association writes its row when it starts and when it ends, and
        a commit that waits for the disk's flush added about 0.5 ms to each.
        A power loss may therefore lose the newest rows of the log. It never
        loses one that an instance's index row refers to, because an index
        write returns only after the database's log is flushed, and with it
        everything committed before.
        """
        with self.engine.connect() as connection:
            dialect = connection.dialect.name
            unflushed = commit_unflushed(connection) if dialect == "sqlite" else nullcontext()
            with unflushed, connection.begin():
                if dialect == "postgresql":
                    connection.connection.cursor().execute("SET LOCAL synchronous_commit TO OFF")
                yield connection

    def _upsert_study(self, connection: Connection, statements: IndexStatements, identity_id: int,
                      stored: StoredInstance, now: datetime) -> int:
        """Return the id of the instance's study row, inserting it or noting the new receipt and modality."""
        header = stored.header
        touch = {"uid": header.study_instance_uid, "now": now}
        study = statements.touch_study.execute(connection, touch).fetchone()
        if study is None:
            values = fitted_values(
                Study,
                study_instance_uid=header.study_instance_uid,
                identity_id=identity_id,
                study_date=header.study_date,
                study_time=header.study_time,
                accession_number=header.accession_number,
                study_description=header.study_description,
                modalities=header.modality,
                dicom_study_id=header.study_id,
                patient_id=header.patient_id,
                patient_name=header.patient_name,
                patient_birth_date=header.patient_birth_date,
                patient_sex=header.patient_sex,
                first_received_at=now,
                last_received_at=now,
            )
            inserted = statements.insert_study.execute(connection, values).fetchone()
            if inserted is not None:
                return inserted[0]
            # Another worker inserted the same study first.
            study = statements.touch_study.execute(connection, touch).fetchone()

        study_id, study_modalities = study
        # The modality list is read and written back. touch_study's UPDATE locks
        # the study row (PostgreSQL) or the database (SQLite) until this
        # transaction ends, so no other writer changes the list in between.
        modalities = study_modalities.split("\\") if study_modalities else []
        if header.modality and header.modality not in modalities:
            studies = Study.__table__
            connection.execute(
                update(studies)
                .where(studies.c.id == study_id)
                .values(modalities=fit_text(studies.c.modalities, "\\".join([*modalities, header.modality])))
            )
        return study_id

    def _insert_instance(
        self,
        connection: Connection,
        statements: IndexStatements,
        association_id: int,
        identity_id: int,
        study_id: int,
        stored: StoredInstance,
        now: datetime,
    ) -> None:
        """Insert the instance's index row; an instance indexed before keeps its row."""
        header = stored.header
        values = fitted_values(
            Instance,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            study_id=study_id,
            identity_id=identity_id,
            association_id=association_id,
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            instance_number=header.instance_number,
            transfer_syntax_uid=header.transfer_syntax_uid,
            size_bytes=stored.size_bytes,
            path=stored.relative_path,
            received_at=now,
        )
        statements.insert_instance.execute(connection, values)


# The columns that _upsert_study and _insert_instance set.
STUDY_COLUMNS = (
    "study_instance_uid", "identity_id", "study_date", "study_time", "accession_number", "study_description",
    "modalities", "dicom_study_id", "patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "first_received_at", "last_received_at",
)
INSTANCE_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "series_instance_uid", "study_id", "identity_id", "association_id",
    "modality", "series_number", "series_description", "instance_number", "transfer_syntax_uid", "size_bytes",
    "path", "received_at",
)


@dataclass(frozen=True)
class IndexStatements:
    """The statements that index a received instance, with parameters in place of values."""

    # Parameters: uid, now. Returns the study's id and modalities.
    touch_study: DriverStatement
    # Parameters: STUDY_COLUMNS. Returns the new id, or nothing if the study exists.
    insert_study: DriverStatement
    # Parameters: INSTANCE_COLUMNS. Does nothing if the instance is indexed.
    insert_instance: DriverStatement
    # Parameters: row_id, added_bytes.
    count_on_association: DriverStatement
    # Parameters: row_id, added_bytes, now.
    count_on_identity: DriverStatement
    # Parameters: identity_id, day, instances_received, bytes_received.
    add_usage: DriverStatement


@functools.cache
def index_statements(dialect: Dialect) -> IndexStatements:
    """Compile the indexing statements for `dialect` once per process."""
    studies, instances = Study.__table__, Instance.__table__
    associations, identities = Association.__table__, DicomIdentity.__table__
    return IndexStatements(
        touch_study=DriverStatement.compile(
            update(studies)
            .where(studies.c.study_instance_uid == bindparam("uid"))
            .values(last_received_at=bindparam("now"))
            .returning(studies.c.id, studies.c.modalities),
            dialect,
        ),
        insert_study=DriverStatement.compile(
            upsert(dialect.name, studies)
            .on_conflict_do_nothing(index_elements=[studies.c.study_instance_uid])
            .returning(studies.c.id),
            dialect,
            STUDY_COLUMNS,
        ),
        insert_instance=DriverStatement.compile(
            upsert(dialect.name, instances).on_conflict_do_nothing(index_elements=[instances.c.sop_instance_uid]),
            dialect,
            INSTANCE_COLUMNS,
        ),
        count_on_association=DriverStatement.compile(
            update(associations)
            .where(associations.c.id == bindparam("row_id"))
            .values(
                instances_received=associations.c.instances_received + 1,
                bytes_received=associations.c.bytes_received + bindparam("added_bytes"),
            ),
            dialect,
        ),
        count_on_identity=DriverStatement.compile(
            update(identities)
            .where(identities.c.id == bindparam("row_id"))
            .values(
                instances_received=identities.c.instances_received + 1,
                bytes_received=identities.c.bytes_received + bindparam("added_bytes"),
                last_seen_at=bindparam("now"),
            ),
            dialect,
        ),
        add_usage=DriverStatement.compile(
            add_usage_statement(dialect.name, ("bytes_received", "instances_received")),
            dialect,
            ("identity_id", "day", "bytes_received", "instances_received"),
        ),
    )


# The columns that record_request sets.
ASSOCIATION_COLUMNS = (
    "started_at", "ended_at", "identity_id", "calling_ae_title", "called_ae_title", "peer_address", "peer_port",
    "transport", "local_port", "outcome", "reason", "detail", "operations", "tls_version", "tls_cipher",
    "client_certificate_subject", "client_certificate_fingerprint",
)


@dataclass(frozen=True)
class AssociationStatements:
    """The statements that every association runs, with parameters in place of values."""

    # Parameters: ae_title. Returns IDENTITY_POLICY_QUERY's columns.
    load_identity: DriverStatement
    # Parameters: ASSOCIATION_COLUMNS. Returns the new id.
    insert_association: DriverStatement
    # Parameters: row_id, now, peer_address, transport.
    count_accepted: DriverStatement
    count_rejected: DriverStatement
    # Parameters: row_id, ended_at, outcome, operations. Returns the identity_id.
    close_association: DriverStatement


@functools.cache
def association_statements(dialect: Dialect) -> AssociationStatements:
    """Compile the statements of every association for `dialect` once per process."""
    associations, identities = Association.__table__, DicomIdentity.__table__

    def count_request(counter: str) -> DriverStatement:
        return DriverStatement.compile(
            update(identities)
            .where(identities.c.id == bindparam("row_id"))
            .values({
                counter: identities.c[counter] + 1,
                "last_seen_at": bindparam("now"),
                "last_peer_address": bindparam("peer_address"),
                "last_transport": bindparam("transport"),
            }),
            dialect,
        )

    return AssociationStatements(
        load_identity=DriverStatement.compile(IDENTITY_POLICY_QUERY, dialect),
        insert_association=DriverStatement.compile(
            insert(associations).returning(associations.c.id), dialect, ASSOCIATION_COLUMNS,
        ),
        count_accepted=count_request("associations_accepted"),
        count_rejected=count_request("associations_rejected"),
        close_association=DriverStatement.compile(
            update(associations)
            .where(associations.c.id == bindparam("row_id"))
            .values(ended_at=bindparam("ended_at"), outcome=bindparam("outcome"),
                    operations=bindparam("operations", type_=associations.c.operations.type))
            .returning(associations.c.identity_id),
            dialect,
        ),
    )


@functools.cache
def usage_statement(dialect: Dialect, counters: tuple[str, ...]) -> DriverStatement:
    """Compile the statement that adds to the daily usage `counters` of an identity, once per process."""
    return DriverStatement.compile(
        add_usage_statement(dialect.name, counters), dialect, ("identity_id", "day", *counters)
    )


def _add_usage(connection: Connection, identity_id: int, day: date, increments: Mapping[str, int]) -> None:
    """Add the non-zero `increments` to the identity's usage of `day`, as portal.usage_days.add_usage does."""
    increments = {name: value for name, value in increments.items() if value}
    if increments:
        counters = tuple(sorted(increments))
        usage_statement(connection.dialect, counters).execute(
            connection, {"identity_id": identity_id, "day": day, **increments}
        )


TLS_COLUMNS = ("tls_version", "tls_cipher", "client_certificate_subject", "client_certificate_fingerprint")


def _tls_columns(session: TlsSession | None) -> dict:
    if session is None:
        return dict.fromkeys(TLS_COLUMNS)
    return {
        "tls_version": session.version,
        "tls_cipher": session.cipher,
        "client_certificate_subject": session.client_certificate_subject,
        "client_certificate_fingerprint": session.client_certificate_fingerprint,
    }
