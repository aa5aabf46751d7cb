"""Type checks for API request bodies and query strings.

These only check JSON types and query syntax. The identity rules themselves
(AE title syntax, uniqueness, retrieve address) live in the identity service.
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import request

from portal.api.problems import Problem, validation_problem
from portal.database import MAX_ROW_ID

MAX_ID = MAX_ROW_ID

IDENTITY_FIELDS = {
    "name": "string",
    "ae_title": "string",
    "enabled": "boolean",
    "allow_anonymous_tls": "boolean",
    "require_tls": "boolean",
    "permitted": "operations",
    "retrieve_host": "string or null",
    "retrieve_port": "integer or null",
    "allowed_networks": "string list",
}
REQUIRED_ON_CREATE = ("name", "ae_title")


def json_object() -> dict:
    """Return the request body as a JSON object, or raise a 400 or 415 problem."""
    if not request.is_json:
        raise Problem(415, "send the body as JSON with 'Content-Type: application/json'")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object")
    return body


def identity_fields(body: dict, *, creating: bool) -> dict:
    """Return the identity fields of `body`, or raise a 422 problem naming each wrong field."""
    errors: dict[str, str] = {}
    for field in body:
        if field not in IDENTITY_FIELDS:
            errors[field] = f"unknown field: use {', '.join(IDENTITY_FIELDS)}"
    if creating:
        for field in REQUIRED_ON_CREATE:
            if field not in body:
                errors[field] = "this field is required"

    for field, kind in IDENTITY_FIELDS.items():
        if field in body and not _has_type(body[field], kind):
            errors[field] = f"must be {_describe(kind)}"

    if errors:
        raise validation_problem(errors)
    return {field: value for field, value in body.items() if field in IDENTITY_FIELDS}


def _has_type(value, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("operations", "string list"):
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "string or null":
        return value is None or isinstance(value, str)
    if kind == "integer or null":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    raise AssertionError(f"unknown field kind {kind!r}")


def _describe(kind: str) -> str:
    if kind == "operations":
        return "a list of operation names"
    if kind == "string list":
        return "a list of strings"
    return f"a {kind}" if kind[0] not in "aeiou" else f"an {kind}"


def query_bool(name: str, errors: dict) -> bool | None:
    value = request.args.get(name)
    if value is None:
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    errors[name] = f"invalid boolean {value!r}: use true or false"
    return None


def query_int(name: str, errors: dict, *, minimum: int = 1, maximum: int = MAX_ID,
              default: int | None = None) -> int | None:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        errors[name] = f"invalid integer {value!r}"
        return None
    if not minimum <= number <= maximum:
        errors[name] = f"{number} is out of range: use {minimum} to {maximum}"
        return None
    return number


def query_choice(name: str, allowed: list[str], errors: dict) -> str | None:
    """Return the query parameter `name` if it is one of `allowed`; note an error for any other value."""
    value = request.args.get(name)
    if value is not None and value not in allowed:
        errors[name] = f"invalid {name} {value!r}: use one of {', '.join(allowed)}"
        return None
    return value


def query_datetime(name: str, errors: dict) -> datetime | None:
    """Parse an ISO 8601 timestamp; one without a time zone is taken as UTC."""
    value = request.args.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        errors[name] = f"invalid timestamp {value!r}: use ISO 8601, for example 2026-01-31T08:00:00Z"
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def raise_query_errors(errors: dict) -> None:
    if errors:
        raise validation_problem(errors, status=400)
