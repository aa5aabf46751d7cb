"""Security headers, session expiry and sign-in throttling."""

from __future__ import annotations

import time
from datetime import timedelta

from flask import Flask, Response, abort, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user, logout_user

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def register(app: Flask, idle_minutes: int) -> None:
    app.session_interface = HttpsAwareSessionInterface()
    app.permanent_session_lifetime = timedelta(minutes=idle_minutes)

    @app.before_request
    def expire_idle_session():
        # The cookie's own expiry is only a hint to the browser, so the idle
        # limit is enforced from a timestamp inside the signed session.
        now = int(time.time())
        last_active = session.get("last_active")
        if current_user.is_authenticated and last_active is not None and now - last_active > idle_minutes * 60:
            logout_user()
            session.clear()
        session.permanent = True
        session["last_active"] = now

    @app.before_request
    def reject_nul_characters():
        # No field of this product takes a NUL, and PostgreSQL cannot store one,
        # so such a request is rejected before it reaches a query.
        for values in (request.args, request.form):
            for key, value in values.items(multi=True):
                if "\x00" in key or "\x00" in value:
                    abort(400, description="The request contains a NUL character, which no field accepts.")

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
