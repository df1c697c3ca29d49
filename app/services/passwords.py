"""Password hashing (argon2id) and the strength rule."""
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

from app.services.errors import ValidationFailed
from app.services.password_rules import MAX_LENGTH, describe, problem  # noqa: F401 (MAX_LENGTH: the API schemas)

_fast = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # tests only
_standard = PasswordHasher()


def _hasher():
    return _fast if current_app.config.get("NULLOPS_PASSWORD_HASH_FAST") else _standard


def hash_password(password):
    return _hasher().hash(password)


def verify_password(password_hash, password):
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def rules():
    """The rule in words, for the pages that ask for a password."""
    return describe(current_app.config["NULLOPS_PASSWORD_MIN_LENGTH"])


def check_strength(password, username, field="password"):
    found = problem(password, username, current_app.config["NULLOPS_PASSWORD_MIN_LENGTH"])
    if found:
        raise ValidationFailed(f"{field} is too weak: {found}", {field: found})
