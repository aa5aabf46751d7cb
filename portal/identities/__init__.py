from flask import Blueprint

bp = Blueprint("identities", __name__, url_prefix="/settings/devices/dicom")

from portal.identities import routes  # noqa: E402,F401  (registers the views on bp)
from portal.identities import transfer_routes  # noqa: E402,F401  (CSV import and export views)
from portal.identities import tls_routes  # noqa: E402,F401  (TLS settings and client certificates)
