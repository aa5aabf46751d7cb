"""The `dicomd` command: turns the settings into a running supervisor."""

from __future__ import annotations

import logging
import sys

import click
from sqlalchemy.engine import make_url

from dicomd import configure_logging
from dicomd.policy import Transport
from dicomd.supervisor import (
    StartupError,
    Supervisor,
    bind_listener,
    check_database,
    prepare_storage,
    prepare_tls,
)
from portal.database import SchemaNotCurrent
from portal.settings import Settings, SettingsError

log = logging.getLogger(__name__)

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)

# Exit codes of `dicomd run`.
EXIT_FAILURE = 1
EXIT_BAD_SETTINGS = 2


@click.group()
def main() -> None:
    """Run and manage the DICOM daemon of the PACS gateway."""


@main.command()
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True,
              help="Level of dicomd's own log messages.")
@click.option("--pynetdicom-log-level", type=LOG_LEVELS, default="WARNING", show_default=True,
              help="Level of pynetdicom's log messages; DEBUG shows every PDU.")
def run(log_level: str, pynetdicom_log_level: str) -> None:
    """Run the supervisor and its listener workers until SIGTERM or Ctrl-C.

    Settings come from the environment (DATA_DIR, DATABASE_URL, DICOM_AE_TITLE,
    DICOM_HOST, DICOM_PORT, DICOM_TLS_PORT, DICOM_TLS_CERT, DICOM_TLS_KEY,
    DICOM_TLS_CLIENT_CA, DICOM_TLS_MIN_VERSION, DICOM_TLS_HANDSHAKE_TIMEOUT,
    DICOM_STORAGE_DIR, DICOMD_WORKERS). SIGHUP reloads the TLS certificate files.
    """
    configure_logging(log_level.upper(), pynetdicom_log_level.upper())
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        log.error("dicomd cannot start: %s", error)
        sys.exit(EXIT_BAD_SETTINGS)

    log.info("dicomd starting: database %s", _safe_url(settings.database_url))
    try:
        check_database(settings)
        prepare_storage(settings)
        prepare_tls(settings)
        listeners = [
            bind_listener(settings.dicom_host, settings.dicom_port, Transport.PLAIN),
            bind_listener(settings.dicom_host, settings.dicom_tls_port, Transport.TLS),
        ]
    except (SchemaNotCurrent, StartupError) as error:
        log.error("dicomd cannot start: %s", error)
        sys.exit(EXIT_FAILURE)

    supervisor = Supervisor(
        settings,
        listeners,
        log_level=log_level.upper(),
        pynetdicom_log_level=pynetdicom_log_level.upper(),
    )
    sys.exit(supervisor.run())


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()
