"""Finding a DICOM identity by the AE title a device calls with.

dicomd's workers use this too, so it imports nothing of the portal's web
modules: importing portal.identities would load Flask and the forms.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import DicomIdentity


def find_by_ae_title(session: Session, ae_title: str) -> DicomIdentity | None:
    """Return the identity whose AE title matches exactly, padding spaces aside."""
    return session.scalar(select(DicomIdentity).where(DicomIdentity.ae_title == stored_ae_title(ae_title)))


def stored_ae_title(ae_title: str) -> str:
    """Return `ae_title` as identities store it: without padding spaces, case kept."""
    return ae_title.strip(" ")
