"""Bulk import and export of DICOM identities as CSV, shared by the CLI and the portal.

An import is planned by applying every row through the identity service in
the caller's session. To preview, the caller rolls the session back. To
import, it commits only when no row was rejected. Both steps run the same
code, so the preview shows exactly what a confirmation writes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import audit
from portal.identities.service import (
    IdentityValidationError,
    create_identity,
    parse_operations,
    update_identity,
)
from portal.identity_lookup import find_by_ae_title
from portal.models import DicomIdentity
from portal.networks import split_entries, validate_networks

REQUIRED_FIELDS = ["name", "ae_title", "enabled", "allow_anonymous_tls", "require_tls", "permitted",
                   "retrieve_host", "retrieve_port"]
# Columns a file may leave out; a missing one leaves that setting as it is.
OPTIONAL_FIELDS = ["allowed_networks"]
CSV_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
BOOLEAN_FIELDS = ("enabled", "allow_anonymous_tls", "require_tls")
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
# Operations in one cell are separated by ';' so the cell needs no CSV quoting.
OPERATION_SEPARATOR = ";"
MAX_IMPORT_BYTES = 1024 * 1024

CREATE, UPDATE, UNCHANGED, REJECT = "create", "update", "unchanged", "reject"


class ImportFileError(ValueError):
    """The file as a whole cannot be read as an identity CSV. The message gives the reason."""


@dataclass
class RowPlan:
    """The action that importing one CSV row takes, with its reasons."""

    line: int
    ae_title: str
    name: str
    action: str = CREATE
    # Field name to message for a rejected row, or to "old → new" for an update.
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportPlan:
    rows: list[RowPlan]

    def count(self, action: str) -> int:
        return sum(1 for row in self.rows if row.action == action)

    @property
    def rejected(self) -> bool:
        return self.count(REJECT) > 0

    @property
    def changes(self) -> int:
        return self.count(CREATE) + self.count(UPDATE)

    def summary(self) -> str:
        return (f"{self.count(CREATE)} to create, {self.count(UPDATE)} to update, "
                f"{self.count(UNCHANGED)} unchanged, {self.count(REJECT)} rejected")


def export_csv(session: Session, stream: TextIO) -> int:
    """Write every identity to `stream` in the import format, by name. Returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    identities = session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    for identity in identities:
        writer.writerow(_export_row(identity))
    return len(identities)


def decode_upload(data: bytes) -> str:
    """Decode an uploaded file as UTF-8 (a byte order mark from spreadsheet programs is dropped)."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportFileError(f"the file has {len(data)} bytes; the maximum is {MAX_IMPORT_BYTES}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportFileError(f"the file is not UTF-8 text (byte {error.start}): save it as CSV UTF-8") from None


def plan_import(session: Session, text: str, actor: str | None = None) -> ImportPlan:
    """Apply every row of `text` to `session` and return what each row does.

    Rejected rows change nothing. Created and updated identities get an audit
    event with `actor`. The caller rolls back to preview, or commits when the
    plan has no rejected row.
    """
    reader = csv.DictReader(io.StringIO(text))
    _check_header(reader.fieldnames)

    plans: list[RowPlan] = []
    first_line_of: dict[str, int] = {}
    for row in reader:
        plan = RowPlan(line=reader.line_num, ae_title=(row.get("ae_title") or "").strip(" "),
                       name=(row.get("name") or "").strip())
        plans.append(plan)

        duplicate_of = first_line_of.setdefault(plan.ae_title, plan.line)
        if duplicate_of != plan.line:
            plan.action = REJECT
            plan.details["ae_title"] = f"AE title {plan.ae_title!r} already appears on line {duplicate_of}"
            continue
        _apply_row(session, row, plan, actor)
    return ImportPlan(plans)


def _check_header(fieldnames: list[str] | None) -> None:
    if not fieldnames:
        raise ImportFileError(f"the file is empty: the first line must be the header {','.join(CSV_FIELDS)}")
    header = [name.strip() for name in fieldnames]
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    unknown = [name for name in header if name not in CSV_FIELDS]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column {', '.join(map(repr, unknown))}")
        raise ImportFileError(f"invalid header ({'; '.join(problems)}): use {','.join(CSV_FIELDS)}")
    if len(set(header)) != len(header):
        raise ImportFileError("the header names a column twice")


def _apply_row(session: Session, row: dict, plan: RowPlan, actor: str | None) -> None:
    values, errors = _parse_row(row)
    existing = find_by_ae_title(session, values.get("ae_title") or plan.ae_title) if plan.ae_title else None

    if not errors:
        try:
            if existing is None:
                created = create_identity(session, **values)
                audit.record("identity.create", "dicom_identity", created.ae_title,
                             after=created.to_dict(), actor=actor)
            else:
                _update(session, existing, values, plan, actor)
                return
        except IdentityValidationError as error:
            errors.update(error.errors)

    if errors:
        plan.action = REJECT
        plan.details = errors


def _update(session: Session, identity: DicomIdentity, values: dict, plan: RowPlan, actor: str | None) -> None:
    current = {name: getattr(identity, name) for name in values}
    changes = {name: value for name, value in values.items() if current[name] != value}
    if not changes:
        plan.action = UNCHANGED
        return

    before = identity.to_dict()
    update_identity(session, identity, **changes)
    plan.action = UPDATE
    plan.details = {name: f"{_cell(current[name])} → {_cell(value)}" for name, value in changes.items()}
    audit.record("identity.update", "dicom_identity", identity.ae_title, before=before,
                 after=identity.to_dict(), actor=actor)


def _parse_row(row: dict) -> tuple[dict, dict[str, str]]:
    """Turn CSV cells into identity service arguments; return them with per-field errors."""
    errors: dict[str, str] = {}
    # csv.DictReader puts surplus cells under None and fills missing ones with None.
    if None in row or any(value is None for value in row.values()):
        errors["row"] = "the row has a different number of columns than the header"
        return {}, errors

    # Normalized as the service does, so that an unchanged row compares equal.
    values: dict = {"name": " ".join(row["name"].split()), "ae_title": row["ae_title"].strip(" ")}
    for name in BOOLEAN_FIELDS:
        cell = row[name].strip().lower()
        if cell in TRUE_WORDS:
            values[name] = True
        elif cell in FALSE_WORDS:
            values[name] = False
        else:
            errors[name] = f"invalid value {row[name]!r}: use true or false"

    try:
        values["permitted"] = parse_operations(row["permitted"].replace(OPERATION_SEPARATOR, ","))
    except ValueError as error:
        errors["permitted"] = str(error)

    if row.get("allowed_networks") is not None:
        networks, network_errors = validate_networks(split_entries(row["allowed_networks"].replace(";", ",")))
        if network_errors:
            errors["allowed_networks"] = "; ".join(network_errors.values())
        else:
            values["allowed_networks"] = networks

    values["retrieve_host"] = row["retrieve_host"].strip() or None
    port = row["retrieve_port"].strip()
    if not port:
        values["retrieve_port"] = None
    elif port.isdigit():
        values["retrieve_port"] = int(port)
    else:
        errors["retrieve_port"] = f"invalid port {port!r}: use a number from 1 to 65535"
    return values, errors


def _export_row(identity: DicomIdentity) -> list[str]:
    details = identity.to_dict()
    return [_cell(details[name]) for name in CSV_FIELDS]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return OPERATION_SEPARATOR.join(value)
    return str(value)
