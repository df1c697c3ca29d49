"""Issue 17 item 6: a secret changed while a key rotation runs keeps its new value (the rotation
read its batch without row locks and wrote the old value back, re-encrypted)."""
import threading

import pytest

from app import crypto
from app.extensions import db
from app.models import Project, ProjectSecret, User
from app.services import catalog, keys

pytestmark = pytest.mark.postgres


def test_a_secret_changed_during_a_rotation_keeps_its_new_value(app, admin):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL (row locks between two connections)")
    project = catalog.create(admin, Project, "shop")
    catalog.put_secret(admin, project, "DB_PASSWORD", "old-value")
    project_id, admin_id = project.id, admin.id
    new_keyring = crypto.KeyRing(b"n" * 32, [app.config["NULLOPS_MASTER_KEY"]])
    batch_read, writer_done = threading.Event(), threading.Event()
    real_decrypt = new_keyring.decrypt

    def decrypt_then_pause(token, context):
        # The rotation has read its batch: a user changes the secret now.
        batch_read.set()
        writer_done.wait(timeout=1.0)  # without locks the writer finishes here
        return real_decrypt(token, context)

    new_keyring.decrypt = decrypt_then_pause

    def change_secret():
        with app.app_context():
            batch_read.wait(timeout=10)
            catalog.put_secret(db.session.get(User, admin_id), db.session.get(Project, project_id),
                               "DB_PASSWORD", "new-value")
            writer_done.set()
            db.session.remove()

    writer = threading.Thread(target=change_secret)
    writer.start()
    try:
        keys.rotate(new_keyring)
    finally:
        writer.join(timeout=30)
    db.session.expire_all()
    secret = db.session.scalar(db.select(ProjectSecret))
    assert real_decrypt(secret.value_ciphertext, catalog.SECRET_CONTEXT) == "new-value"
