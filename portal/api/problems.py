"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

from http import HTTPStatus

from flask import Response, json
from werkzeug.exceptions import HTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are relative URIs; each names one kind of failure.
TYPE_VALIDATION = "/api/v1/problems/validation"
TYPE_UNAUTHORIZED = "/api/v1/problems/unauthorized"
TYPE_FORBIDDEN = "/api/v1/problems/forbidden"
TYPE_NOT_FOUND = "/api/v1/problems/not-found"
TYPE_HTTP = "about:blank"


class Problem(Exception):
    """A failed API request, turned into a problem+json response by the blueprint."""

    def __init__(self, status: int, detail: str, *, type_: str = TYPE_HTTP,
                 errors: dict[str, str] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.errors = errors
        self.headers = headers or {}


def validation_problem(errors: dict[str, str], status: int = 422) -> Problem:
    fields = ", ".join(errors)
    return Problem(status, f"invalid value for {fields}", type_=TYPE_VALIDATION, errors=errors)


def problem_response(problem: Problem) -> Response:
    body = {
        "type": problem.type,
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(problem.headers)
    return response


def http_exception_response(error: HTTPException) -> Response:
    """Turn a werkzeug error raised inside an API view (abort, bad JSON) into a problem."""
    type_ = TYPE_NOT_FOUND if error.code == 404 else TYPE_HTTP
    problem = Problem(error.code or 500, error.description or HTTPStatus(error.code or 500).phrase, type_=type_)
    response = problem_response(problem)
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response
