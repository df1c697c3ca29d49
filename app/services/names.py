"""Name rules shared by the API schemas, the CLI and the services."""
import re

from app.services.errors import ValidationFailed

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"
USERNAME_HINT = "3-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
# One DNS label: environment and project names become parts of ingress host names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DNS_LABEL_HINT = "a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
SECRET_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,63}$"
SECRET_NAME_HINT = "1-64 characters: uppercase letters, digits and '_', not starting with a digit"
TEAM_NAME_PATTERN = r"^\S(.{0,62}\S)?$"
TEAM_NAME_HINT = "1-64 characters without leading or trailing spaces"


def check(field, value, pattern, hint):
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise ValidationFailed(f"{field} is invalid: use {hint}", {field: f"use {hint}"})
    return value
