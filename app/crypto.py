"""AES-256-GCM for secrets at rest.

A ciphertext reads `nlk1:<key id>:<base64url(nonce || ciphertext || tag)>`. The key id lets
`nullops keys rotate` re-encrypt under a new key while old keys stay readable. Each value is
bound to its purpose (the AEAD context, e.g. "project_secret.value"), so a ciphertext copied
into another column does not decrypt.
"""
import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "nlk1"
NONCE_BYTES = 12


class CryptoError(Exception):
    """A value cannot be decrypted; the message says why without revealing anything secret."""


class UnknownKeyError(CryptoError):
    pass


class TamperedError(CryptoError):
    pass


def generate_key():
    """A new master key as NULLOPS_SECRET_KEY expects it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key):
    return hashlib.sha256(b"nullops-key-id:" + key).hexdigest()[:12]


class KeyRing:
    """The current key encrypts; the current and older keys decrypt."""

    def __init__(self, current, old=()):
        self.current_id = key_id(current)
        self._keys = {key_id(k): AESGCM(k) for k in old}
        self._keys[self.current_id] = AESGCM(current)

    def encrypt(self, plaintext, context):
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current_id].encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{FORMAT}:{self.current_id}:{body}"

    def decrypt(self, token, context):
        kid, raw = self._split(token)
        aead = self._keys.get(kid)
        if aead is None:
            raise UnknownKeyError(
                f"value was encrypted with key {kid}, which is not configured; "
                "add it to NULLOPS_OLD_SECRET_KEYS"
            )
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except InvalidTag:
            raise TamperedError(
                f"value under key {kid} failed authentication ({context}): "
                "it was altered or belongs to another field"
            ) from None

    def is_current(self, token):
        return self._split(token)[0] == self.current_id

    @staticmethod
    def _split(token):
        parts = token.split(":") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != FORMAT:
            raise CryptoError("value is not a NullOps ciphertext (expected nlk1:<key id>:<data>)")
        try:
            raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        except (ValueError, TypeError):
            raise TamperedError("ciphertext is not valid base64") from None
        if len(raw) < NONCE_BYTES + 16:
            raise TamperedError("ciphertext is truncated")
        return parts[1], raw
