"""Name rules shared by the API schemas, the CLI and the services."""
import ipaddress
import re

from app.services.errors import ValidationFailed

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"
USERNAME_HINT = "3-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
# One DNS label: environment and project names become parts of ingress host names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DNS_LABEL_HINT = "a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
# A DNS name of such labels (an environment's base domain, e.g. staging.example.com).
DNS_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
DNS_NAME_MAX = 200
DNS_NAME_HINT = (
    "a DNS name of at most 200 characters: lowercase labels of letters, digits or '-' "
    "joined by dots, e.g. staging.example.com or localhost"
)
HOST_MAX = 255
HOST_HINT = "a host name (e.g. node-1.internal) or an IP address, without scheme, port or path"
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SECRET_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,63}$"
SECRET_NAME_HINT = "1-64 characters: uppercase letters, digits and '_', not starting with a digit"
TEAM_NAME_PATTERN = r"^\S(.{0,62}\S)?$"
TEAM_NAME_HINT = "1-64 characters without leading or trailing spaces"


def check(field, value, pattern, hint):
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise ValidationFailed(f"{field} is invalid: use {hint}", {field: f"use {hint}"})
    return value


def check_host(field, value):
    """A node's address as the controller dials it: a host name or an IP address. Returns it
    normalised (host names lowercased, IPv6 without brackets, IPs in their canonical form)."""

    def refuse(why):
        raise ValidationFailed(f"{field} is invalid: {why}; use {HOST_HINT}",
                               {field: f"{why}; use {HOST_HINT}"})

    if not isinstance(value, str) or not value or len(value) > HOST_MAX:
        refuse(f"give 1-{HOST_MAX} characters")
    if "://" in value:
        refuse("leave out the scheme (http://, wss://)")
    if "/" in value:
        refuse("leave out the path")
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if ":" in value:
        refuse("put the port in the port field")
    labels = value.lower().rstrip(".").split(".")
    # An all-digit last label is a mistyped IPv4 address (999.1.1.1), never a host name.
    if not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        refuse("it is neither a valid host name nor an IP address")
    return ".".join(labels)
