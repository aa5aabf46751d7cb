"""DICOM identity rules shared by the portal's forms and the CLI."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.aetitle import InvalidAETitle, normalize_ae_title
from portal.models import DEFAULT_OPERATIONS, DicomIdentity, Operation
from portal.networks import validate_networks

MAX_NAME_LENGTH = 128
OPERATION_NAMES = [operation.value for operation in Operation]

# Labels of the DIMSE request types, in the order of OPERATION_NAMES.
OPERATION_LABELS = {
    "echo": "C-ECHO",
    "store": "C-STORE",
    "find": "C-FIND",
    "move": "C-MOVE",
    "get": "C-GET",
    "commit": "Storage commitment",
}

# Permission presets for common devices: (label, operation names).
PRESETS = {
    "modality": ("Modality (echo, store, storage commitment)", ["echo", "store", "commit"]),
    "workstation": ("Workstation (echo, find, move, get)", ["echo", "find", "move", "get"]),
}


class IdentityValidationError(ValueError):
    """One or more identity fields are invalid; `errors` maps field name to message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


def clean_name(value: str) -> str:
    name = " ".join(value.split())
    if not name:
        raise ValueError("a name is required")
    if not name.isprintable():
        raise ValueError("a name may not contain control characters")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a name has at most {MAX_NAME_LENGTH} characters; this one has {len(name)}")
    return name


def parse_operations(value: str) -> list[str]:
    """Parse a comma-separated list such as 'echo,store' into operation names."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in OPERATION_NAMES]
    if unknown:
        raise ValueError(
            f"unknown operation {', '.join(map(repr, unknown))}: use {', '.join(OPERATION_NAMES)}"
        )
    return [name for name in OPERATION_NAMES if name in names]


def create_identity(session: Session, *, name: str, ae_title: str, **settings) -> DicomIdentity:
    """Validate and add a new identity. The caller commits."""
    values = _validate(session, {"name": name, "ae_title": ae_title, **settings}, existing=None)
    values.setdefault("permitted", list(DEFAULT_OPERATIONS))
    identity = DicomIdentity(**values)
    session.add(identity)
    session.flush()
    return identity


def update_identity(session: Session, identity: DicomIdentity, **changes) -> DicomIdentity:
    """Validate `changes` and apply them to `identity`. The caller commits."""
    values = _validate(session, changes, existing=identity)
    for field, value in values.items():
        setattr(identity, field, value)
    session.flush()
    return identity


def _validate(session: Session, values: dict, existing: DicomIdentity | None) -> dict:
    errors: dict[str, str] = {}
    cleaned: dict = {}

    if "name" in values:
        try:
            cleaned["name"] = clean_name(values["name"] or "")
        except ValueError as error:
            errors["name"] = str(error)

    if "ae_title" in values:
        try:
            ae_title = normalize_ae_title(values["ae_title"] or "")
        except InvalidAETitle as error:
            errors["ae_title"] = str(error)
        else:
            cleaned["ae_title"] = ae_title
            cleaned["ae_title_folded"] = ae_title.upper()

    for flag in ("enabled", "allow_anonymous_tls", "require_tls"):
        if flag in values:
            cleaned[flag] = bool(values[flag])

    if "permitted" in values:
        unknown = [name for name in values["permitted"] if name not in OPERATION_NAMES]
        if unknown:
            errors["permitted"] = f"unknown operation {', '.join(map(repr, unknown))}: use {', '.join(OPERATION_NAMES)}"
        else:
            cleaned["permitted"] = [name for name in OPERATION_NAMES if name in values["permitted"]]

    if "allowed_networks" in values:
        networks, network_errors = validate_networks(values["allowed_networks"] or [])
        if network_errors:
            errors["allowed_networks"] = "; ".join(network_errors.values())
        else:
            cleaned["allowed_networks"] = networks

    _validate_retrieve_address(values, existing, cleaned, errors)
    _check_unique(session, cleaned, existing, errors)

    if errors:
        raise IdentityValidationError(errors)
    return cleaned


def _validate_retrieve_address(values: dict, existing: DicomIdentity | None, cleaned: dict, errors: dict) -> None:
    if "retrieve_host" in values:
        host = (values["retrieve_host"] or "").strip() or None
        if host is not None and (len(host) > 255 or any(c.isspace() or not c.isprintable() for c in host)):
            errors["retrieve_host"] = f"invalid host {host!r}: use a host name or an IP address"
        else:
            cleaned["retrieve_host"] = host

    if "retrieve_port" in values:
        port = values["retrieve_port"]
        if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
            errors["retrieve_port"] = f"invalid port {port!r}: use a number from 1 to 65535"
        else:
            cleaned["retrieve_port"] = port

    host = cleaned.get("retrieve_host", existing.retrieve_host if existing else None)
    port = cleaned.get("retrieve_port", existing.retrieve_port if existing else None)
    if "retrieve_host" not in errors and "retrieve_port" not in errors and (host is None) != (port is None):
        errors["retrieve_port" if host else "retrieve_host"] = "a retrieve address needs both a host and a port"


def _check_unique(session: Session, cleaned: dict, existing: DicomIdentity | None, errors: dict) -> None:
    others = select(DicomIdentity)
    if existing is not None:
        others = others.where(DicomIdentity.id != existing.id)

    if "name" in cleaned:
        clash = session.scalar(others.where(func.lower(DicomIdentity.name) == cleaned["name"].lower()))
        if clash is not None:
            errors["name"] = f"the name is already used by the identity with AE title {clash.ae_title!r}"

    if "ae_title" in cleaned:
        clash = session.scalar(others.where(DicomIdentity.ae_title_folded == cleaned["ae_title_folded"]))
        if clash is not None and clash.ae_title == cleaned["ae_title"]:
            errors["ae_title"] = f"AE title {clash.ae_title!r} is already registered as {clash.name!r}"
        elif clash is not None:
            errors["ae_title"] = (
                f"AE title {cleaned['ae_title']!r} differs only by case from {clash.ae_title!r}, "
                f"registered as {clash.name!r}; devices and people confuse the two, so use another AE title"
            )
