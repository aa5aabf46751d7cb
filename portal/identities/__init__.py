from flask import Blueprint

bp = Blueprint("identities", __name__, url_prefix="/settings/devices/dicom")

from portal.identities import routes  # noqa: E402,F401  (registers the views on bp)
