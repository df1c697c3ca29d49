"""URL converters for the whole app (API, pages, streams).

Issue 17 item 7: ids past 64 bits in a path (`/api/v1/plugins/4884118140033206386163712`) reached
the database, which refused them ("bigint out of range") and the caller got a 500. Ids are
BIGINT at most, so a larger number names nothing: the route does not match and the answer is
the ordinary 404.
"""
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

# The largest value of a signed 64-bit column (PostgreSQL BIGINT, SQLite INTEGER).
ID_MAX = 2**63 - 1


class IdConverter(IntegerConverter):
    """`<int:...>` bounded to what an id column can hold."""

    def to_python(self, value):
        number = super().to_python(value)
        if number > ID_MAX:
            # NotFound, not the converter's ValidationError: with that, the router tries the
            # path's other rules and answers 405 when one of them (same path, other method)
            # had matched before the bound was checked.
            raise NotFound()
        return number


def init_app(app):
    # Before any blueprint is registered: rules pick their converter when they are added.
    app.url_map.converters["int"] = IdConverter
