"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json.

tests/test_api_schema.py checks that every route is described here and that
every described path exists, and runs schemathesis against this document.
"""

from __future__ import annotations

from portal.api.payloads import MAX_ID
from portal.identities.service import MAX_NAME_LENGTH, OPERATION_NAMES
from portal.usage.reasons import REASONS
from portal.usage.routes import OUTCOMES, TRANSPORTS

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problem(description: str) -> dict:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


UNAUTHORIZED = _problem("Missing, malformed, unknown or revoked token, or its owner is disabled.")
FORBIDDEN = _problem("The token's owner lacks the permission.")
NOT_FOUND = _problem("No identity with this id.")
BAD_QUERY = _problem("A query parameter is invalid; `errors` names each one.")
INVALID = _problem("A field is invalid; `errors` names each one.")
BAD_BODY = _problem("The body is not a JSON object.")
NOT_JSON = _problem("The body is not sent as application/json.")

IDENTITY_ID = {
    "name": "identity_id", "in": "path", "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _nullable(kind: str, **extra) -> dict:
    return {"type": [kind, "null"], **extra}


IDENTITY_PROPERTIES = {
    "name": {"type": "string", "description": f"Display name, at most {MAX_NAME_LENGTH} characters."},
    "ae_title": {"type": "string", "description": "AE title the device calls with, at most 16 characters."},
    "enabled": {"type": "boolean"},
    "allow_anonymous_tls": {"type": "boolean", "description": "Accept TLS without a client certificate."},
    "require_tls": {"type": "boolean", "description": "Reject this identity on the plain DICOM port."},
    "permitted": {"type": "array", "items": {"type": "string", "enum": OPERATION_NAMES},
                  "description": "DIMSE request types the device may send."},
    "retrieve_host": _nullable("string", description="Host that C-MOVE sends retrievals to."),
    "retrieve_port": _nullable("integer", description="Port for retrieve_host."),
    "allowed_networks": {"type": "array", "items": {"type": "string"},
                         "description": "Source addresses or CIDR ranges the device may connect from, "
                                        "such as 10.1.4.0/24 or fd00::/64; empty allows any address."},
}

USAGE_PROPERTIES = {
    "last_seen": _nullable("string", format="date-time"),
    "last_peer_address": _nullable("string"),
    "last_transport": _nullable("string"),
    "associations_accepted": {"type": "integer"},
    "associations_rejected": {"type": "integer"},
    "instances_received": {"type": "integer"},
    "bytes_received": {"type": "integer"},
}

SCHEMAS = {
    "Identity": {
        "type": "object",
        "required": ["id", *IDENTITY_PROPERTIES, "created_at", *USAGE_PROPERTIES],
        "properties": {
            "id": {"type": "integer"},
            **IDENTITY_PROPERTIES,
            "created_at": _nullable("string", format="date-time"),
            **USAGE_PROPERTIES,
        },
    },
    "IdentityCreate": {
        "type": "object",
        "required": ["name", "ae_title"],
        "additionalProperties": False,
        "properties": IDENTITY_PROPERTIES,
    },
    "IdentityUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": IDENTITY_PROPERTIES,
    },
    "IdentityList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Identity")}},
    },
    "Usage": {
        "type": "object",
        "required": ["id", "ae_title", *USAGE_PROPERTIES],
        "properties": {"id": {"type": "integer"}, "ae_title": {"type": "string"}, **USAGE_PROPERTIES},
    },
    "Association": {
        "type": "object",
        "required": ["id", "started_at", "peer_address", "transport", "outcome"],
        "properties": {
            "id": {"type": "integer"},
            "started_at": {"type": "string", "format": "date-time"},
            "ended_at": _nullable("string", format="date-time"),
            "identity_id": _nullable("integer"),
            "calling_ae_title": _nullable("string"),
            "called_ae_title": _nullable("string"),
            "peer_address": {"type": "string"},
            "peer_port": _nullable("integer"),
            "transport": {"type": "string", "description": "plain or tls"},
            "local_port": _nullable("integer"),
            "outcome": {"type": "string", "description": "accepted, rejected or aborted"},
            "reason": _nullable("string", description="Why it was rejected or failed, for example tls_required."),
            "detail": _nullable("string"),
            "operations": {"type": "object", "additionalProperties": {"type": "integer"},
                           "description": "Number of requests per operation."},
            "instances_received": {"type": "integer"},
            "bytes_received": {"type": "integer"},
        },
    },
    "AssociationPage": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": _ref("Association")},
            "next": _nullable("string", description="URL of the next (older) page, or null on the last page."),
        },
    },
    "Status": {
        "type": "object",
        "required": ["status", "database"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "error"]},
            "database": {"type": "string", "enum": ["ok", "error"]},
            "identities": {"type": "integer"},
            "identities_enabled": {"type": "integer"},
            "associations": {"type": "integer"},
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Message per failing field or query parameter."},
        },
    },
}

IDENTITY_READ = "Needs integrations.manage or usage.view."
IDENTITY_WRITE = "Needs integrations.manage. Recorded in the audit trail with the token's owner as actor."

PATHS = {
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        },
    },
    "/api/v1/status": {
        "get": {
            "summary": "Service status: database check and counts",
            "description": IDENTITY_READ,
            "responses": {
                "200": _json(_ref("Status"), "The service is working."),
                "401": UNAUTHORIZED, "403": FORBIDDEN,
                "503": _json(_ref("Status"), "The database cannot be reached."),
            },
        },
    },
    "/api/v1/identities": {
        "get": {
            "summary": "List DICOM identities, by name",
            "description": IDENTITY_READ,
            "parameters": [
                _query("enabled", {"type": "boolean"}, "Only enabled (true) or disabled (false) identities."),
                _query("ae_title", {"type": "string"}, "Exact AE title, padding spaces aside."),
                _query("q", {"type": "string"}, "Part of the name, case-insensitive."),
            ],
            "responses": {"200": _json(_ref("IdentityList"), "The identities."),
                          "400": BAD_QUERY, "401": UNAUTHORIZED, "403": FORBIDDEN},
        },
        "post": {
            "summary": "Create a DICOM identity",
            "description": IDENTITY_WRITE + " Omitted settings get the portal's defaults.",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("IdentityCreate")}}},
            "responses": {
                "201": {**_json(_ref("Identity"), "Created."),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                "400": BAD_BODY, "401": UNAUTHORIZED, "403": FORBIDDEN, "415": NOT_JSON, "422": INVALID,
            },
        },
    },
    "/api/v1/identities/{identity_id}": {
        "parameters": [IDENTITY_ID],
        "get": {
            "summary": "Read a DICOM identity with its usage summary",
            "description": IDENTITY_READ,
            "responses": {"200": _json(_ref("Identity"), "The identity."),
                          "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND},
        },
        "patch": {
            "summary": "Change some settings of a DICOM identity",
            "description": IDENTITY_WRITE + " Fields left out keep their values.",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("IdentityUpdate")}}},
            "responses": {"200": _json(_ref("Identity"), "The identity after the change."),
                          "400": BAD_BODY, "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND,
                          "415": NOT_JSON, "422": INVALID},
        },
        "delete": {
            "summary": "Delete a DICOM identity; its association log stays",
            "description": IDENTITY_WRITE,
            "responses": {"204": {"description": "Deleted."},
                          "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND},
        },
    },
    "/api/v1/identities/{identity_id}/usage": {
        "parameters": [IDENTITY_ID],
        "get": {
            "summary": "Usage counters and last contact of a DICOM identity",
            "description": "Needs usage.view.",
            "responses": {"200": _json(_ref("Usage"), "The usage summary."),
                          "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND},
        },
    },
    "/api/v1/associations": {
        "get": {
            "summary": "The connection log, newest first",
            "description": "Needs usage.view. Pages with `limit` and `after`: follow `next` until it is null.",
            "parameters": [
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                       "Entries per page."),
                _query("after", {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                       "Cursor: only entries with a smaller id, as in `next`."),
                _query("identity_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, "Only this identity."),
                _query("outcome", {"type": "string", "enum": OUTCOMES}, "Only this outcome."),
                _query("reason", {"type": "string", "enum": sorted(REASONS)}, "Only this recorded reason."),
                _query("transport", {"type": "string", "enum": TRANSPORTS}, "Only this listener."),
                _query("peer_address", {"type": "string"}, "Exact peer IP address."),
                _query("since", {"type": "string", "format": "date-time"},
                       "Started at or after this ISO 8601 time; UTC when no offset is given."),
                _query("until", {"type": "string", "format": "date-time"}, "Started before this time."),
            ],
            "responses": {"200": _json(_ref("AssociationPage"), "One page of the log."),
                          "400": BAD_QUERY, "401": UNAUTHORIZED, "403": FORBIDDEN},
        },
    },
}


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PACS connectivity API",
            "version": "1",
            "description": "DICOM identities, their usage and the connection log. "
                           "Errors are application/problem+json. Authenticate with "
                           "'Authorization: Bearer <token>'; create tokens on the portal's account page "
                           "or with `portal token create USER`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerToken": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerToken": {"type": "http", "scheme": "bearer"}},
        },
    }
