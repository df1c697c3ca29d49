"""Master key rotation: re-encrypt every encrypted column under the current key."""
from app.extensions import db
from app.services import audit


def encrypted_models():
    """Every model that declares `__encrypted__ = {column: context}`."""
    return [
        mapper.class_
        for mapper in db.Model.registry.mappers
        if getattr(mapper.class_, "__encrypted__", None)
    ]


def rotate(keyring, batch_size=500):
    """Re-encrypt values not under the current key. Returns {table: count}. Idempotent, and
    safe to rerun after a crash: every batch commits, old keys stay readable meanwhile."""
    counts = {}
    for model in encrypted_models():
        (key,) = db.inspect(model).primary_key  # one integer column: `id`, or `deployment_id`
        done = 0
        last_id = 0
        while True:
            # FOR UPDATE: a value changed between this read and the batch's commit would be
            # overwritten with its old value re-encrypted (issue 17 item 6). The lock makes such a
            # write wait for the batch's commit and then apply on top of it. (SQLite ignores it:
            # it has one writer at a time.)
            rows = db.session.scalars(
                db.select(model).where(key > last_id).order_by(key).limit(batch_size)
                .with_for_update(of=model)
            ).all()
            if not rows:
                break
            for row in rows:
                for column, context in model.__encrypted__.items():
                    token = getattr(row, column)
                    if token and not keyring.is_current(token):
                        setattr(row, column, keyring.encrypt(keyring.decrypt(token, context), context))
                        done += 1
            last_id = getattr(rows[-1], key.key)
            db.session.commit()
        counts[model.__tablename__] = done
    audit.record(None, "keys.rotate", "keyring", None, {"reencrypted": counts},
                 target_name=keyring.current_id)
    db.session.commit()
    return counts
