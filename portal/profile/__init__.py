"""The signed-in user's own account page and API tokens."""

from flask import Blueprint

bp = Blueprint("profile", __name__, url_prefix="/account")

from portal.profile import routes  # noqa: E402,F401  (registers the views on bp)
