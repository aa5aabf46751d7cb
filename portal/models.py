"""The data model shared by the portal and dicomd.

Plain SQLAlchemy 2.0 declarative mapping: dicomd uses it with an ordinary
`Session`, and the portal wraps the same metadata with Flask-SQLAlchemy.
"""

from __future__ import annotations

import enum
import secrets
from datetime import date, datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_session_token() -> str:
    return secrets.token_hex(16)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite has no timezone type, so values read back would otherwise be naive.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware UTC timestamps")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


# Stable constraint names, so that migrations can alter them on SQLite too.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Permission(str, enum.Enum):
    """A right that a role grants its users in the portal."""

    INTEGRATIONS_MANAGE = "integrations.manage"
    USAGE_VIEW = "usage.view"
    USERS_MANAGE = "users.manage"
    AUDIT_VIEW = "audit.view"


class Operation(str, enum.Enum):
    """DIMSE request types a DICOM identity may be permitted to send."""

    ECHO = "echo"
    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"
    COMMIT = "commit"


DEFAULT_OPERATIONS = [Operation.ECHO.value, Operation.STORE.value]


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)

    users: Mapped[list[User]] = relationship(back_populates="role")

    def has(self, permission: Permission) -> bool:
        return permission.value in self.permissions


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Part of the session cookie's user id. A new token on password change or
    # disable signs the user out of every other session.
    session_token: Mapped[str] = mapped_column(String(32), default=new_session_token)

    role: Mapped[Role] = relationship(back_populates="users", lazy="joined")

    def can(self, permission: Permission) -> bool:
        return self.enabled and self.role.has(permission)

    # The attributes Flask-Login expects of a user, without importing Flask here.
    is_authenticated = True
    is_anonymous = False

    @property
    def is_active(self) -> bool:
        return self.enabled

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"


class DicomIdentity(Base):
    """A device registered by the AE title it calls with, and what it may do."""

    __tablename__ = "dicom_identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    # The AE title in upper case: two identities may not differ only by case,
    # because devices and administrators confuse them.
    ae_title_folded: Mapped[str] = mapped_column(String(16), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_anonymous_tls: Mapped[bool] = mapped_column(Boolean, default=False)
    require_tls: Mapped[bool] = mapped_column(Boolean, default=False)
    permitted: Mapped[list[str]] = mapped_column(JSON, default=lambda: list(DEFAULT_OPERATIONS))
    # Source networks the device may connect from, as CIDR strings; empty means any address.
    allowed_networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    retrieve_host: Mapped[str | None] = mapped_column(String(255))
    retrieve_port: Mapped[int | None] = mapped_column(Integer)
    # The client certificate bound to this identity: when set, TLS associations
    # with this AE title are accepted only with this certificate.
    client_certificate_pem: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the certificate's DER encoding, in lower-case hex.
    client_certificate_fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    client_certificate_subject: Mapped[str | None] = mapped_column(String(512))
    client_certificate_not_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # Usage summary, updated by dicomd with atomic increments.
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_peer_address: Mapped[str | None] = mapped_column(String(64))
    last_transport: Mapped[str | None] = mapped_column(String(16))
    associations_accepted: Mapped[int] = mapped_column(Integer, default=0)
    associations_rejected: Mapped[int] = mapped_column(Integer, default=0)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)

    def permits(self, operation: Operation) -> bool:
        return operation.value in self.permitted

    @property
    def status(self) -> str:
        """One word for lists: disabled, never connected or enabled."""
        if not self.enabled:
            return "disabled"
        if self.last_seen_at is None:
            return "never connected"
        return "enabled"

    def to_dict(self) -> dict:
        """Return the fields that `portal identity list --json` documents."""
        return {
            "id": self.id,
            "name": self.name,
            "ae_title": self.ae_title,
            "enabled": self.enabled,
            "allow_anonymous_tls": self.allow_anonymous_tls,
            "require_tls": self.require_tls,
            "permitted": [op.value for op in Operation if op.value in self.permitted],
            "allowed_networks": list(self.allowed_networks or []),
            "retrieve_host": self.retrieve_host,
            "retrieve_port": self.retrieve_port,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "last_seen": self.last_seen_at.isoformat() if self.last_seen_at else None,
            "last_peer_address": self.last_peer_address,
            "last_transport": self.last_transport,
            "associations_accepted": self.associations_accepted,
            "associations_rejected": self.associations_rejected,
            "instances_received": self.instances_received,
            "bytes_received": self.bytes_received,
        }


class Association(Base):
    """One association attempt, accepted or not, as dicomd saw it.

    Append-only from the portal's side.
    """

    __tablename__ = "associations"
    __table_args__ = (
        Index("ix_associations_identity_started", "identity_id", "started_at"),
        # Newest-first pages of one identity's log walk this index.
        Index("ix_associations_identity_id", "identity_id", "id"),
        Index("ix_associations_started", "started_at"),
        # Unrecognised devices: recent rejections of one reason.
        Index("ix_associations_reason_started", "reason", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("dicom_identities.id", ondelete="SET NULL")
    )
    # None when the request never got far enough to decode the AE titles.
    calling_ae_title: Mapped[str | None] = mapped_column(String(64))
    called_ae_title: Mapped[str | None] = mapped_column(String(64))
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int | None] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(16))
    local_port: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    # TLS associations only: the negotiated version and cipher suite, and the
    # client certificate's subject ("anonymous" without one) and SHA-256 fingerprint.
    tls_version: Mapped[str | None] = mapped_column(String(16))
    tls_cipher: Mapped[str | None] = mapped_column(String(64))
    client_certificate_subject: Mapped[str | None] = mapped_column(String(512))
    client_certificate_fingerprint: Mapped[str | None] = mapped_column(String(64))
    operations: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)

    identity: Mapped[DicomIdentity | None] = relationship()


class UsageDay(Base):
    """One identity's usage on one UTC day.

    dicomd adds to these rows as it works, so usage periods, charts and
    all-time totals stay right after old association rows are pruned.
    """

    __tablename__ = "usage_days"
    __table_args__ = (UniqueConstraint("identity_id", "day"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("dicom_identities.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    associations_accepted: Mapped[int] = mapped_column(Integer, default=0)
    associations_rejected: Mapped[int] = mapped_column(Integer, default=0)
    echo_requests: Mapped[int] = mapped_column(Integer, default=0)
    store_requests: Mapped[int] = mapped_column(Integer, default=0)
    find_requests: Mapped[int] = mapped_column(Integer, default=0)
    move_requests: Mapped[int] = mapped_column(Integer, default=0)
    get_requests: Mapped[int] = mapped_column(Integer, default=0)
    commit_requests: Mapped[int] = mapped_column(Integer, default=0)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)


class ListenerHeartbeat(Base):
    """The last heartbeat of one dicomd listener, so the portal can show what is up."""

    __tablename__ = "listener_heartbeats"
    __table_args__ = (UniqueConstraint("node", "transport", "port"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)


class Study(Base):
    """A study with at least one stored instance, linked to the identity that first sent it."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("dicom_identities.id", ondelete="SET NULL"), index=True
    )
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(128))
    modalities: Mapped[str | None] = mapped_column(String(64))
    # Study ID (0020,0010), an SH value that the modality assigns.
    dicom_study_id: Mapped[str | None] = mapped_column(String(16))
    # Patient attributes as the first stored instance of the study gave them;
    # the name in its DICOM PN form ("Family^Given").
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    identity: Mapped[DicomIdentity | None] = relationship()


class Instance(Base):
    """A stored SOP instance; `path` is relative to the storage directory."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("dicom_identities.id", ondelete="SET NULL"), index=True
    )
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    modality: Mapped[str | None] = mapped_column(String(16))
    # Series attributes are kept on every instance of the series, as received.
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[Study] = relationship()


class AuditEvent(Base):
    """An administrative action: who did what to which target, from where.

    Append-only: no page or command edits it.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    source_address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128))
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)


class ApiToken(Base):
    """A bearer token for the JSON API. It acts with its owner's role.

    Only the SHA-256 digest of the token is stored: the token itself is shown
    once, when it is created.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, so that a user can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="joined")

    @property
    def active(self) -> bool:
        return self.revoked_at is None
