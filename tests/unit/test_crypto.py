import os

import pytest

from app.crypto import CryptoError, KeyRing, TamperedError, UnknownKeyError, generate_key, key_id

OLD, NEW = os.urandom(32), os.urandom(32)
CTX = "project_secret.value"


def test_round_trip_returns_the_plaintext_and_hides_it():
    ring = KeyRing(NEW)
    token = ring.encrypt("postgres://app:hunter2@db/app", CTX)
    assert "hunter2" not in token
    assert token.startswith(f"nlk1:{key_id(NEW)}:")
    assert ring.decrypt(token, CTX) == "postgres://app:hunter2@db/app"


def test_same_plaintext_encrypts_differently_each_time():
    ring = KeyRing(NEW)
    assert ring.encrypt("x", CTX) != ring.encrypt("x", CTX)


def test_tampered_ciphertext_fails_loudly():
    ring = KeyRing(NEW)
    token = ring.encrypt("secret", CTX)
    prefix, body = token.rsplit(":", 1)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(TamperedError, match="failed authentication"):
        ring.decrypt(f"{prefix}:{flipped}", CTX)


def test_ciphertext_moved_to_another_field_does_not_decrypt():
    ring = KeyRing(NEW)
    with pytest.raises(TamperedError):
        ring.decrypt(ring.encrypt("secret", CTX), "registry.password")


def test_wrong_key_with_the_same_id_is_tampering_and_unknown_id_is_named():
    token = KeyRing(NEW).encrypt("secret", CTX)
    with pytest.raises(UnknownKeyError, match=key_id(NEW)):
        KeyRing(OLD).decrypt(token, CTX)
    forged = token.replace(key_id(NEW), key_id(OLD))
    with pytest.raises(TamperedError):
        KeyRing(OLD).decrypt(forged, CTX)


def test_rotation_keyring_reads_old_values_and_writes_with_the_new_key():
    old_token = KeyRing(OLD).encrypt("secret", CTX)
    ring = KeyRing(NEW, old=[OLD])
    assert ring.decrypt(old_token, CTX) == "secret"
    assert not ring.is_current(old_token)
    assert ring.is_current(ring.encrypt("secret", CTX))


@pytest.mark.parametrize("garbage", ["", "plain text", "nlk1:abc", "nlk2:a:b", "nlk1:a:!!!", "nlk1:a:AAAA"])
def test_garbage_is_refused_with_a_clear_error(garbage):
    with pytest.raises(CryptoError):
        KeyRing(NEW).decrypt(garbage, CTX)


def test_generated_keys_are_32_random_bytes():
    import base64

    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a)) == 32 and a != b
