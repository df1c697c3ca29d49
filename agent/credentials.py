"""The token verifier in force: the only token-derived secret the agent keeps on disk.

`agent.verifier` (0600) holds {verifier, token_fingerprint}: the verifier the handshake uses
and a fingerprint of the AGENT_TOKEN value it was last derived from. The fingerprint is an HMAC
of the token under another label than the verifier, so it proves nothing in a handshake; it only
tells whether AGENT_TOKEN changed since. At start:

- AGENT_TOKEN's fingerprint equals the stored one: keep the stored verifier. A `token.rotate`
  over the link may have replaced it, and the unchanged `docker run` line of the node still
  carries the old token: that old token must stay refused.
- AGENT_TOKEN is set and differs: an admin configured a new token by hand; derive its verifier.
- AGENT_TOKEN is unset: keep the stored verifier; with none stored, refuse to start.
"""
import hashlib
import hmac
import json
import logging
import threading
from pathlib import Path

from agent.protocol import valid_verifier, verifier_for
from agent.tls import write_private

log = logging.getLogger("nullops.agent.credentials")

VERIFIER_FILE = "agent.verifier"
FINGERPRINT_LABEL = b"nullops-agent-token-fingerprint/v1"


class CredentialsError(Exception):
    """No usable verifier; the message says how to give the agent one."""


def token_fingerprint(token):
    return hmac.new(token.encode("utf-8"), FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


class Credentials:
    def __init__(self, path, verifier, fingerprint):
        self.path = Path(path)
        self._verifier = verifier
        self._fingerprint = fingerprint
        self._lock = threading.Lock()

    @classmethod
    def load(cls, data_dir, env_token):
        """The verifier in force for this start (rules in the module docstring)."""
        path = Path(data_dir) / VERIFIER_FILE
        stored = _read(path)
        if env_token:
            fingerprint = token_fingerprint(env_token)
            if stored and hmac.compare_digest(stored["token_fingerprint"], fingerprint):
                return cls(path, stored["verifier"], fingerprint)
            creds = cls(path, verifier_for(env_token), fingerprint)
            creds._save()
            log.info("AGENT_TOKEN %s; stored its verifier",
                     "changed since the last start" if stored else "read for the first time")
            return creds
        if stored:
            return cls(path, stored["verifier"], stored["token_fingerprint"])
        raise CredentialsError(
            f"AGENT_TOKEN is not set and {path} holds no verifier: start the agent with "
            f"AGENT_TOKEN=<the node token the control plane showed when the node was added>")

    @property
    def verifier(self):
        with self._lock:
            return self._verifier

    def rotate(self, new_verifier):
        """Store a new verifier (from `token.rotate`); new links must prove the new token at once.
        The fingerprint stays: it still names the AGENT_TOKEN value the agent was started with."""
        if not valid_verifier(new_verifier):
            raise ValueError("a verifier is 64 lowercase hex digits")
        with self._lock:
            previous = self._verifier
            self._verifier = new_verifier
            try:
                self._save()
            except OSError:
                self._verifier = previous
                raise

    def _save(self):
        data = {"verifier": self._verifier, "token_fingerprint": self._fingerprint}
        write_private(self.path, json.dumps(data).encode())


def _read(path):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
        ok = (isinstance(data, dict) and valid_verifier(data.get("verifier"))
              and valid_verifier(data.get("token_fingerprint")))
    except ValueError:
        ok = False
    if not ok:
        raise CredentialsError(f"{path} is damaged: delete it and start the agent with AGENT_TOKEN set")
    return data
