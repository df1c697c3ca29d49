"""Secrets shown once, on the page after the form that made them (a new API or node token).

They wait in the session, which Flask keeps in a signed but readable cookie: so they go in
encrypted under the master key, never in clear, and are removed when read."""
import json

from flask import session

from app.crypto import CryptoError
from app.services.catalog import keyring

CONTEXT = "ui.shown_once"


def remember(kind, data):
    session[f"shown_once.{kind}"] = keyring().encrypt(json.dumps(data), f"{CONTEXT}.{kind}")


def take(kind):
    """The remembered data (a dict), once; None when there is none or it cannot be read."""
    sealed = session.pop(f"shown_once.{kind}", None)
    if sealed is None:
        return None
    try:
        return json.loads(keyring().decrypt(sealed, f"{CONTEXT}.{kind}"))
    except (CryptoError, ValueError):
        return None
