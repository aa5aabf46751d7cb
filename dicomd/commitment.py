"""Storage Commitment Push Model (PS3.4 Annex J): check the referenced instances and build the report.

The N-ACTION request lists instances that the device wants the PACS to be
responsible for. Each one is committed when it is indexed with the same SOP
Class UID and its file is in the storage directory. The result goes back in
an N-EVENT-REPORT with event type 1 (all committed) or 2 (some failed).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomd.retrieve import stored_path
from portal.models import Instance

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
# N-ACTION Action Type ID "Request Storage Commitment".
ACTION_REQUEST_COMMITMENT = 1
# N-EVENT-REPORT Event Type IDs: all references committed, or at least one failed.
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# Failure Reason values of the Failed SOP Sequence (PS3.4 J.3.3.2.2.1 via PS3.7 Annex C).
FAILURE_PROCESSING = 0x0110
FAILURE_NO_SUCH_INSTANCE = 0x0112
FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119


class InvalidCommitmentRequest(ValueError):
    """The N-ACTION information lacks its Transaction UID or its Referenced SOP Sequence."""


@dataclass(frozen=True)
class CommitmentResult:
    """The N-EVENT-REPORT to send for one transaction: its event type and event information."""

    event_type: int
    information: Dataset
    committed: int
    failed: int


def check_commitment(session: Session, storage_dir, action_information: Dataset) -> CommitmentResult:
    """Check every referenced instance and return the report; raise InvalidCommitmentRequest on a malformed request."""
    transaction_uid = str(action_information.get("TransactionUID", "") or "").strip()
    references = action_information.get("ReferencedSOPSequence")
    if not transaction_uid:
        raise InvalidCommitmentRequest("the Transaction UID is missing")
    if not references:
        raise InvalidCommitmentRequest("the Referenced SOP Sequence is missing or empty")

    information = Dataset()
    information.TransactionUID = transaction_uid
    committed, failed = [], []
    for reference in references:
        sop_class_uid = str(reference.get("ReferencedSOPClassUID", "") or "")
        sop_instance_uid = str(reference.get("ReferencedSOPInstanceUID", "") or "")
        reason = _failure_reason(session, storage_dir, sop_class_uid, sop_instance_uid)
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        if reason is None:
            committed.append(item)
        else:
            item.FailureReason = reason
            failed.append(item)

    if committed:
        information.ReferencedSOPSequence = committed
    if failed:
        information.FailedSOPSequence = failed
    event_type = EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED
    return CommitmentResult(event_type, information, committed=len(committed), failed=len(failed))


def _failure_reason(session: Session, storage_dir, sop_class_uid: str, sop_instance_uid: str) -> int | None:
    instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    if instance is None:
        return FAILURE_NO_SUCH_INSTANCE
    if instance.sop_class_uid != sop_class_uid:
        return FAILURE_CLASS_INSTANCE_CONFLICT
    try:
        if not stored_path(storage_dir, instance.path).is_file():
            return FAILURE_PROCESSING
    except ValueError:
        return FAILURE_PROCESSING
    return None


def report_context():
    """Return the presentation context that a report on a new association proposes."""
    return build_context(STORAGE_COMMITMENT_PUSH_MODEL)


def report_role():
    """Return the role selection item of a report on a new association: the PACS acts as the SCP."""
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = STORAGE_COMMITMENT_PUSH_MODEL
    role.scu_role = False
    role.scp_role = True
    return role
