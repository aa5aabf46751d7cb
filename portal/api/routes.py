"""The /api/v1 endpoints: identities, their usage, the connection log and status."""

from __future__ import annotations

import logging

from flask import jsonify, request, url_for
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from portal import audit
from portal.api import bp
from portal.api.auth import api_user, token_required
from portal.api.openapi import openapi_document
from portal.api.payloads import (
    MAX_ID,
    identity_fields,
    json_object,
    query_bool,
    query_choice,
    query_datetime,
    query_int,
    raise_query_errors,
)
from portal.api.problems import TYPE_NOT_FOUND, Problem, http_exception_response, problem_response, validation_problem
from portal.extensions import db
from portal.identities.service import IdentityValidationError, create_identity, update_identity
from portal.models import Association, DicomIdentity, Permission
from portal.usage.routes import filter_options

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
ASSOCIATION_FILTERS = ("outcome", "reason", "transport", "peer_address")
USAGE_FIELDS = ("last_seen", "last_peer_address", "last_transport", "associations_accepted",
                "associations_rejected", "instances_received", "bytes_received")


@bp.errorhandler(Problem)
def handle_problem(problem: Problem):
    db.session.rollback()
    return problem_response(problem)


@bp.errorhandler(HTTPException)
def handle_http_exception(error: HTTPException):
    db.session.rollback()
    return http_exception_response(error)


# The portal's HTML pages for these codes are registered on the app by code,
# and Flask prefers a handler by code over one by class, so the API registers
# its problem+json handler for the same codes.
for status in (400, 403, 404, 405, 413, 429, 500):
    bp.register_error_handler(status, handle_http_exception)


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@bp.get("/status")
@token_required(Permission.INTEGRATIONS_MANAGE, Permission.USAGE_VIEW)
def status():
    try:
        db.session.execute(text("SELECT 1"))
        identities = db.session.scalar(select(func.count()).select_from(DicomIdentity))
        enabled = db.session.scalar(select(func.count()).where(DicomIdentity.enabled.is_(True)))
        associations = db.session.scalar(select(func.count()).select_from(Association))
    except SQLAlchemyError as error:
        log.error("API status: database check failed: %s", error)
        db.session.rollback()
        return jsonify(status="error", database="error"), 503
    return jsonify(status="ok", database="ok", identities=identities, identities_enabled=enabled,
                   associations=associations)


@bp.get("/identities")
@token_required(Permission.INTEGRATIONS_MANAGE, Permission.USAGE_VIEW)
def list_identities():
    errors: dict[str, str] = {}
    enabled = query_bool("enabled", errors)
    raise_query_errors(errors)

    query = select(DicomIdentity).order_by(DicomIdentity.name)
    if enabled is not None:
        query = query.where(DicomIdentity.enabled.is_(enabled))
    if "ae_title" in request.args:
        query = query.where(DicomIdentity.ae_title == request.args["ae_title"].strip(" "))
    if request.args.get("q"):
        query = query.where(func.lower(DicomIdentity.name).contains(request.args["q"].lower(), autoescape=True))
    return jsonify(items=[identity.to_dict() for identity in db.session.scalars(query)])


@bp.post("/identities")
@token_required(Permission.INTEGRATIONS_MANAGE)
def create():
    fields = identity_fields(json_object(), creating=True)

    try:
        identity = create_identity(db.session, **fields)
    except IdentityValidationError as error:
        raise validation_problem(error.errors) from None

    owner = api_user().username
    audit.record("identity.create", "dicom_identity", identity.ae_title, after=identity.to_dict(), actor=owner)
    db.session.commit()
    log.info("identity %r (%s) created through the API by %s", identity.ae_title, identity.name, owner)

    response = jsonify(identity.to_dict())
    response.status_code = 201
    response.headers["Location"] = url_for("api.read", identity_id=identity.id)
    return response


@bp.get("/identities/<int:identity_id>")
@token_required(Permission.INTEGRATIONS_MANAGE, Permission.USAGE_VIEW)
def read(identity_id: int):
    return jsonify(get_identity_or_problem(identity_id).to_dict())


@bp.patch("/identities/<int:identity_id>")
@token_required(Permission.INTEGRATIONS_MANAGE)
def update(identity_id: int):
    identity = get_identity_or_problem(identity_id)
    fields = identity_fields(json_object(), creating=False)

    before = identity.to_dict()
    try:
        update_identity(db.session, identity, **fields)
    except IdentityValidationError as error:
        raise validation_problem(error.errors) from None

    after = identity.to_dict()
    if after != before:
        owner = api_user().username
        audit.record("identity.update", "dicom_identity", identity.ae_title, before=before, after=after,
                     actor=owner)
        log.info("identity %r updated through the API by %s", identity.ae_title, owner)
    db.session.commit()
    return jsonify(identity.to_dict())


@bp.delete("/identities/<int:identity_id>")
@token_required(Permission.INTEGRATIONS_MANAGE)
def delete(identity_id: int):
    identity = get_identity_or_problem(identity_id)

    before = identity.to_dict()
    owner = api_user().username
    db.session.delete(identity)
    audit.record("identity.delete", "dicom_identity", before["ae_title"], before=before, actor=owner)
    db.session.commit()
    log.info("identity %r deleted through the API by %s", before["ae_title"], owner)
    return "", 204


@bp.get("/identities/<int:identity_id>/usage")
@token_required(Permission.USAGE_VIEW)
def usage(identity_id: int):
    details = get_identity_or_problem(identity_id).to_dict()
    return jsonify({"id": details["id"], "ae_title": details["ae_title"],
                    **{field: details[field] for field in USAGE_FIELDS}})


@bp.get("/associations")
@token_required(Permission.USAGE_VIEW)
def associations():
    errors: dict[str, str] = {}
    limit = query_int("limit", errors, maximum=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)
    after = query_int("after", errors)
    identity_id = query_int("identity_id", errors)
    since = query_datetime("since", errors)
    until = query_datetime("until", errors)
    for name, allowed in filter_options().items():
        query_choice(name, allowed, errors)
    raise_query_errors(errors)

    # Newest first by id, which only grows, so a page boundary never moves
    # when dicomd appends new attempts.
    query = select(Association).order_by(Association.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(Association.id < after)
    if identity_id is not None:
        query = query.where(Association.identity_id == identity_id)
    for name in ASSOCIATION_FILTERS:
        if name in request.args:
            query = query.where(getattr(Association, name) == request.args[name])
    if since is not None:
        query = query.where(Association.started_at >= since)
    if until is not None:
        query = query.where(Association.started_at < until)

    rows = list(db.session.scalars(query))
    page = rows[:limit]
    next_url = None
    if len(rows) > limit:
        arguments = {**request.args.to_dict(), "after": page[-1].id, "limit": limit}
        next_url = url_for("api.associations", **arguments)
    return jsonify(items=[association_to_dict(row) for row in page], next=next_url)


@bp.route("/<path:unknown>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_found(unknown: str):
    raise Problem(404, f"no API resource at /api/v1/{unknown}: /api/v1/openapi.json lists them",
                  type_=TYPE_NOT_FOUND)


def get_identity_or_problem(identity_id: int) -> DicomIdentity:
    identity = db.session.get(DicomIdentity, identity_id) if identity_id <= MAX_ID else None
    if identity is None:
        raise Problem(404, f"no identity with id {identity_id}", type_=TYPE_NOT_FOUND)
    return identity


def association_to_dict(association: Association) -> dict:
    return {
        "id": association.id,
        "started_at": association.started_at.isoformat(),
        "ended_at": association.ended_at.isoformat() if association.ended_at else None,
        "identity_id": association.identity_id,
        "calling_ae_title": association.calling_ae_title,
        "called_ae_title": association.called_ae_title,
        "peer_address": association.peer_address,
        "peer_port": association.peer_port,
        "transport": association.transport,
        "local_port": association.local_port,
        "outcome": association.outcome,
        "reason": association.reason,
        "detail": association.detail,
        "operations": association.operations or {},
        "instances_received": association.instances_received,
        "bytes_received": association.bytes_received,
    }
