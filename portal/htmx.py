"""Helpers for requests made by htmx."""

from flask import Response, request


def is_htmx_request() -> bool:
    """Tell a fragment request from a full-page one.

    Boosted requests and history restores need the full page, so they count
    as full-page requests.
    """
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-Boosted") != "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def vary_on_htmx(response: Response) -> Response:
    """Tell caches that the body depends on the HX-Request header."""
    response.vary.add("HX-Request")
    return response
