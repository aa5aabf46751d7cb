"""URL converters of the portal's routes."""

from __future__ import annotations

from werkzeug.routing import IntegerConverter

from portal.database import MAX_ROW_ID


class RowIdConverter(IntegerConverter):
    """A row id in a URL. Larger numbers do not match, so they get 404 rather than a database error."""

    def __init__(self, url_map, **kwargs):
        super().__init__(url_map, min=1, max=MAX_ROW_ID)
