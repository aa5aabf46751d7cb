"""dicomd: the DICOM daemon that accepts associations from registered identities and stores what they send."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str, pynetdicom_level: str) -> None:
    """Log to stderr at `level`; pynetdicom's own logger gets its own, usually quieter, level."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
