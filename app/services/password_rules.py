"""The password rule, with nothing but the standard library: `make run` checks
NULLOPS_ADMIN_PASSWORD with it before installing anything (scripts/check_admin_password.py
loads this file by path), the services through app/services/passwords.py, and the login page
and README state it with describe()."""

# A few passwords that pass a length rule yet are the first ones tried.
COMMON_PASSWORDS = frozenset(
    {"password1234", "passwordpassword", "123456789012", "qwertyuiopas", "adminadminadmin",
     "letmeinletmein", "changemechangeme", "nullopsnullops"}
)
MAX_LENGTH = 256
MIN_DIFFERENT = 5
DEFAULT_MIN_LENGTH = 12


def problem(password, username, minimum):
    """What is wrong with the password, or None."""
    if not isinstance(password, str) or len(password) < minimum:
        return f"use at least {minimum} characters"
    if len(password) > MAX_LENGTH:
        return f"use at most {MAX_LENGTH} characters"
    if len(set(password)) < MIN_DIFFERENT:
        return f"use at least {MIN_DIFFERENT} different characters"
    if username and username.lower() in password.lower():
        return "do not include the username"
    if password.lower() in COMMON_PASSWORDS:
        return "this password is too common; choose another"
    return None


def describe(minimum):
    return (f"at least {minimum} characters (at most {MAX_LENGTH}), {MIN_DIFFERENT} of them "
            "different, without the username and not a common password")
