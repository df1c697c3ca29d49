"""Password hashing (argon2id) and the strength rule."""
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

from app.services.errors import ValidationFailed

# A few passwords that pass a length rule yet are the first ones tried.
COMMON_PASSWORDS = frozenset(
    {"password1234", "passwordpassword", "123456789012", "qwertyuiopas", "adminadminadmin",
     "letmeinletmein", "changemechangeme", "nullopsnullops"}
)
MAX_LENGTH = 256

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


def check_strength(password, username, field="password"):
    minimum = current_app.config["NULLOPS_PASSWORD_MIN_LENGTH"]
    problem = None
    if not isinstance(password, str) or len(password) < minimum:
        problem = f"use at least {minimum} characters"
    elif len(password) > MAX_LENGTH:
        problem = f"use at most {MAX_LENGTH} characters"
    elif len(set(password)) < 5:
        problem = "use at least 5 different characters"
    elif username and username.lower() in password.lower():
        problem = "do not include the username"
    elif password.lower() in COMMON_PASSWORDS:
        problem = "this password is too common; choose another"
    if problem:
        raise ValidationFailed(f"{field} is too weak: {problem}", {field: problem})
