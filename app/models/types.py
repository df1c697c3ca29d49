"""Column types shared by the models."""
from datetime import UTC, datetime

from sqlalchemy import DateTime, TypeDecorator

# Table arguments of tables whose ids leave the database (agent labels, the controller's state,
# caches): SQLite gives the next row the highest id plus one, a deleted row's too, unless the table
# is AUTOINCREMENT. PostgreSQL's sequences never go back and ignore this. Migration 0009.
NEVER_REUSED_IDS = {"sqlite_autoincrement": True}


def utcnow():
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC: SQLite keeps no zone, PostgreSQL would convert."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)
