"""The JSON API under /api/v1, authenticated with bearer tokens."""

from flask import Blueprint

from portal.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# Clients send a bearer token, not a session cookie, so a forged cross-site
# request carries no credentials and CSRF tokens protect nothing here.
csrf.exempt(bp)

from portal.api import routes  # noqa: E402,F401  (registers the views on bp)
