"""Settings read from the environment, shared by the portal and dicomd."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from portal.aetitle import InvalidAETitle, normalize_ae_title


class SettingsError(Exception):
    """An environment variable has a value the product cannot use."""


@dataclass(frozen=True)
class Settings:
    """Configuration of one installation, resolved from environment variables."""

    data_dir: Path
    database_url: str
    portal_host: str
    portal_port: int
    dicom_ae_title: str
    dicom_host: str
    dicom_port: int
    dicom_tls_port: int
    dicom_tls_cert: Path | None
    dicom_tls_key: Path | None
    dicom_tls_client_ca: Path | None
    storage_dir: Path
    dicomd_workers: int
    dicom_tls_min_version: str = "1.2"
    dicom_tls_handshake_timeout: float = 10.0
    # ARTIM timer (PS3.8 9.1.5): seconds a connection gets to send its
    # A-ASSOCIATE-RQ, and a release request its response.
    dicom_acse_timeout: float = 30.0
    # Seconds to wait for a DIMSE response from the peer, such as a C-STORE
    # sub-operation's response during C-GET or C-MOVE.
    dicom_dimse_timeout: float = 30.0
    # Seconds an association may stay silent before it is aborted.
    dicom_network_timeout: float = 60.0
    # Seconds open associations get to finish after SIGTERM before they are aborted.
    dicomd_stop_grace_seconds: float = 10.0
    # Associations open at once, over all workers, and per DICOM identity.
    dicomd_max_associations: int = 100
    dicomd_max_associations_per_identity: int = 20
    node_name: str = "dicomd"
    session_idle_minutes: int = 30
    trusted_proxies: int = 0
    dicom_public_host: str | None = None
    ratelimit_storage_uri: str = "memory://"
    secret_key_value: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("DATA_DIR") or "./instance").expanduser().absolute()
        if bool(env.get("DICOM_TLS_CERT")) != bool(env.get("DICOM_TLS_KEY")):
            raise SettingsError(
                "DICOM_TLS_CERT and DICOM_TLS_KEY go together: set both, or neither to use the generated pair"
            )

        return cls(
            data_dir=data_dir,
            database_url=_database_url(env, data_dir),
            portal_host=env.get("PORTAL_HOST") or "127.0.0.1",
            portal_port=_port(env, "PORTAL_PORT", 8000),
            dicom_ae_title=_ae_title(env, "DICOM_AE_TITLE", "PACS"),
            dicom_host=env.get("DICOM_HOST") or "0.0.0.0",
            dicom_port=_port(env, "DICOM_PORT", 11112),
            dicom_tls_port=_port(env, "DICOM_TLS_PORT", 2762),
            dicom_tls_cert=_optional_path(env, "DICOM_TLS_CERT"),
            dicom_tls_key=_optional_path(env, "DICOM_TLS_KEY"),
            dicom_tls_client_ca=_optional_path(env, "DICOM_TLS_CLIENT_CA"),
            storage_dir=_optional_path(env, "DICOM_STORAGE_DIR") or data_dir / "storage",
            dicomd_workers=_positive_int(env, "DICOMD_WORKERS", os.cpu_count() or 1),
            dicom_tls_min_version=_tls_version(env, "DICOM_TLS_MIN_VERSION", "1.2"),
            dicom_tls_handshake_timeout=_seconds(env, "DICOM_TLS_HANDSHAKE_TIMEOUT", 10.0),
            dicom_acse_timeout=_seconds(env, "DICOM_ACSE_TIMEOUT", 30.0, maximum=MAX_TIMEOUT_SECONDS),
            dicom_dimse_timeout=_seconds(env, "DICOM_DIMSE_TIMEOUT", 30.0, maximum=MAX_TIMEOUT_SECONDS),
            dicom_network_timeout=_seconds(env, "DICOM_NETWORK_TIMEOUT", 60.0, maximum=MAX_TIMEOUT_SECONDS),
            dicomd_stop_grace_seconds=_seconds(
                env, "DICOMD_STOP_GRACE_SECONDS", 10.0, maximum=MAX_TIMEOUT_SECONDS, allow_zero=True
            ),
            dicomd_max_associations=_positive_int(env, "DICOMD_MAX_ASSOCIATIONS", 100),
            dicomd_max_associations_per_identity=_positive_int(env, "DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY", 20),
            node_name=_node_name(env),
            session_idle_minutes=_positive_int(env, "PORTAL_SESSION_IDLE_MINUTES", 30),
            trusted_proxies=_count(env, "PORTAL_TRUSTED_PROXIES", 0),
            dicom_public_host=_public_host(env),
            ratelimit_storage_uri=_ratelimit_storage_uri(env),
            secret_key_value=env.get("SECRET_KEY") or None,
        )

    def secret_key(self) -> str:
        """Return SECRET_KEY, or the key generated once into `$DATA_DIR/secret_key`."""
        if self.secret_key_value:
            return self.secret_key_value

        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # O_EXCL: when two processes start together, one creates the key and
            # the other reads it.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
        return path.read_text().strip()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a port number: use a whole number from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name}={raw!r} is out of range: use a port number from 1 to 65535")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit():
        raise SettingsError(f"{name}={raw!r} is invalid: use a whole number, 0 or more")
    return int(raw)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number: use 1 or more") from None
    if value < 1:
        raise SettingsError(f"{name}={raw!r} is invalid: use 1 or more")
    return value


# TLS versions that DICOM_TLS_MIN_VERSION accepts. Older versions are not
# offered, because BCP 195 (RFC 9325) forbids TLS 1.0 and 1.1.
TLS_VERSIONS = ("1.2", "1.3")
MAX_HANDSHAKE_TIMEOUT_SECONDS = 300
# Upper bound of the DICOM timeouts and the stop grace period: one hour.
MAX_TIMEOUT_SECONDS = 3600


def _tls_version(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    version = raw.removeprefix("TLSv").removeprefix("TLS").strip()
    if version not in TLS_VERSIONS:
        raise SettingsError(f"{name}={raw!r} is not a supported TLS version: use {' or '.join(TLS_VERSIONS)}")
    return version


def _seconds(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    maximum: float = MAX_HANDSHAKE_TIMEOUT_SECONDS,
    allow_zero: bool = False,
) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds: use a number such as 10") from None
    if allow_zero and not 0 <= value <= maximum:
        raise SettingsError(f"{name}={raw!r} is out of range: use 0 or more and at most {maximum:g} seconds")
    if not allow_zero and not 0 < value <= maximum:
        raise SettingsError(f"{name}={raw!r} is out of range: use more than 0 and at most {maximum:g} seconds")
    return value


def _ae_title(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return normalize_ae_title(raw)
    except InvalidAETitle as error:
        raise SettingsError(f"{name}={raw!r} is not a valid AE title: {error}") from None


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("DATABASE_URL")
    if not raw:
        return f"sqlite:///{data_dir / 'portal.db'}"
    try:
        backend = make_url(raw).get_backend_name()
    except ArgumentError:
        raise SettingsError(
            "DATABASE_URL is not a database URL: use a form such as sqlite:////var/lib/pacs/portal.db "
            "or postgresql+psycopg://USER:PASSWORD@HOST/DATABASE"
        ) from None
    if backend not in ("sqlite", "postgresql"):
        raise SettingsError(f"DATABASE_URL names the database {backend!r}: use sqlite or postgresql")
    return raw


def _ratelimit_storage_uri(env: Mapping[str, str]) -> str:
    # Imported here because dicomd reads these settings too and has no use for the rate limiter.
    import limits.storage

    raw = env.get("PORTAL_RATELIMIT_STORAGE_URI") or "memory://"
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in limits.storage.SCHEMES:
        raise SettingsError(
            f"PORTAL_RATELIMIT_STORAGE_URI={raw!r} is invalid: use memory://, or a shared store such as "
            "redis://HOST:6379 or memcached://HOST:11211"
        )
    return raw


def _public_host(env: Mapping[str, str]) -> str | None:
    raw = (env.get("DICOM_PUBLIC_HOST") or "").strip()
    if not raw:
        return None
    if len(raw) > 255 or any(character.isspace() or not character.isprintable() for character in raw):
        raise SettingsError(f"DICOM_PUBLIC_HOST={raw!r} is invalid: use a host name or an IP address")
    return raw


def _node_name(env: Mapping[str, str]) -> str:
    raw = (env.get("DICOMD_NODE_NAME") or "").strip()
    if not raw:
        return socket.gethostname()
    if len(raw) > 255 or any(not character.isprintable() for character in raw):
        raise SettingsError(f"DICOMD_NODE_NAME={raw!r} is invalid: use at most 255 printable characters")
    return raw


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw).expanduser().absolute() if raw else None
