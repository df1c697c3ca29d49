"""Step outputs at rest, sealed (AES-256-GCM) with their deployment's output key.

Outputs may hold passwords (a plugin's `secret_outputs`), and the agent keeps no secret on its
disk. Yet a deployment needs its outputs after an agent restart: rollback plugins take them as
input, healing recreates services whose environment refers to them, and secret outputs must
still be redacted. So they are stored sealed, and the key lives where secrets do: in the control
plane's database (encrypted), sent with the spec, held in the agent's memory only. The disk
alone gives nothing away; the next state.sync brings the key back (issue #14.7).
"""
import base64
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class SealError(Exception):
    """A sealed output that this key does not open (another key, or altered on disk)."""


def _aad(deployment_id, step_id):
    return f"nullops-output/v1|{deployment_id}|{step_id}".encode()


def seal(key_hex, deployment_id, step_id, output):
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(output, separators=(",", ":"), sort_keys=True).encode()
    sealed = AESGCM(bytes.fromhex(key_hex)).encrypt(nonce, plain, _aad(deployment_id, step_id))
    return base64.b64encode(nonce + sealed).decode()


def unseal(key_hex, deployment_id, step_id, text):
    raw = base64.b64decode(text)
    try:
        plain = AESGCM(bytes.fromhex(key_hex)).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                                       _aad(deployment_id, step_id))
    except InvalidTag:
        raise SealError(f"the outputs of {deployment_id}/{step_id} do not open with the key sent") from None
    return json.loads(plain)
