"""Entry point for gunicorn: `gunicorn wsgi:app`."""

from portal import create_app
from portal.database import check_schema_current
from portal.extensions import db

app = create_app()

# Serving pages from an old schema would fail on the first query, so refuse
# to start and name the upgrade command instead.
with app.app_context():
    check_schema_current(db.engine)
