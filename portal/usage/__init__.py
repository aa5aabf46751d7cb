from flask import Blueprint

bp = Blueprint("usage", __name__)

from portal.usage import routes  # noqa: E402,F401  (registers the views on bp)
