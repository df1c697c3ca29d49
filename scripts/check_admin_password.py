"""`make run` runs this first, with the system's python3 and before installing anything: a
NULLOPS_ADMIN_PASSWORD the rule refuses would otherwise fail only at `nullops users
create-admin`, after minutes of installing. Exits 1 with the rule when it is refused; nothing
to check when the variable is unset (the password is then generated)."""
import importlib.util
import os
import sys
from pathlib import Path

RULES = Path(__file__).resolve().parents[1] / "app" / "services" / "password_rules.py"
USERNAME = "admin"  # the admin `make run` creates (nullops users create-admin's default)


def _rules():
    # By path: importing the app package would need Flask, which is not installed yet.
    spec = importlib.util.spec_from_file_location("password_rules", RULES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(env=os.environ):
    password = env.get("NULLOPS_ADMIN_PASSWORD")
    if not password:
        return 0
    rules = _rules()
    username = USERNAME
    try:
        minimum = int(env.get("NULLOPS_PASSWORD_MIN_LENGTH") or rules.DEFAULT_MIN_LENGTH)
    except ValueError:
        minimum = rules.DEFAULT_MIN_LENGTH  # the app refuses it with its own message later
    found = rules.problem(password, username, max(minimum, 8))
    if found is None:
        return 0
    print(f"[run] NULLOPS_ADMIN_PASSWORD is refused: {found} ({username!r} is the admin's "
          f"username).\n[run] A password needs {rules.describe(max(minimum, 8))}.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
