"""Local user accounts."""
import secrets

from sqlalchemy import func, select
from sqlalchemy import update as sql_update

from app.extensions import db
from app.models import ApiToken, User
from app.models.identity import KIND_PERSON, KIND_SERVICE, KINDS, ROLE_ADMIN, ROLES
from app.models.types import utcnow
from app.services import audit
from app.services.errors import Conflict, NotFound, ValidationFailed
from app.services.names import USERNAME_HINT, USERNAME_PATTERN, check
from app.services.passwords import check_strength, hash_password, verify_password


def get(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


def by_username(username):
    return db.session.scalar(select(User).where(User.username == username))


def _check_role(role):
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}", {"role": "use admin or user"})


def create(actor, username, password, role="user", full_name="", kind=KIND_PERSON):
    """A person (who logs in with `password`) or a service account (kind "service": no
    password, never logs in; an admin issues its API tokens)."""
    check("username", username, USERNAME_PATTERN, USERNAME_HINT)
    _check_role(role)
    if kind not in KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", {"kind": "use person or service"})
    if kind == KIND_SERVICE:
        if password:
            raise ValidationFailed("a service account has no password; leave password out",
                                   {"password": "leave it out for a service account"})
        # A hash of a random secret nobody knows: no password ever matches it.
        password_hash = hash_password(secrets.token_urlsafe(32))
    else:
        if password is None:
            raise ValidationFailed("password is required", {"password": "this field is required"})
        check_strength(password, username)
        password_hash = hash_password(password)
    if by_username(username) is not None:
        raise Conflict(f"username {username!r} is taken; choose another", {"username": "already taken"})
    user = User(
        username=username,
        full_name=full_name or "",
        role=role,
        kind=kind,
        password_hash=password_hash,
        session_nonce=secrets.token_hex(8),
    )
    db.session.add(user)
    db.session.flush()
    audit.record(actor, "user.create", "user", user, {"role": role, "kind": kind})
    db.session.commit()
    return user


def update(actor, user, full_name=None, role=None, is_active=None):
    changes = {}
    if full_name is not None and full_name != user.full_name:
        user.full_name = changes["full_name"] = full_name
    if role is not None and role != user.role:
        _check_role(role)
        if user.role == ROLE_ADMIN:
            _keep_one_admin(user, "role")
        user.role = changes["role"] = role
    if is_active is not None and is_active != user.is_active:
        if not is_active and user.role == ROLE_ADMIN:
            _keep_one_admin(user, "is_active")
        user.is_active = changes["is_active"] = is_active
        user.session_nonce = secrets.token_hex(8)
    if changes:
        audit.record(actor, "user.update", "user", user, changes)
    db.session.commit()
    return user


def set_password(actor, user, new_password, current_password=None):
    """Change a password; users changing their own must prove the current one. Ends the user's
    sessions and revokes their API tokens: whoever learnt the old password may have made one
    (issue 17 item 3)."""
    if user.is_service_account:
        raise Conflict(f"{user.username} is a service account: it has no password; issue it API "
                       "tokens instead", {"new_password": "service accounts have no password"})
    if current_password is not None and not verify_password(user.password_hash, current_password):
        raise ValidationFailed(
            "current_password is wrong", {"current_password": "enter your current password"}
        )
    check_strength(new_password, user.username, field="new_password")
    user.password_hash = hash_password(new_password)
    user.session_nonce = secrets.token_hex(8)  # ends the user's other sessions
    revoked = db.session.execute(
        sql_update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())).rowcount
    audit.record(actor, "user.set_password", "user", user, {"tokens_revoked": revoked})
    db.session.commit()


def delete(actor, user):
    if user.role == ROLE_ADMIN:
        _keep_one_admin(user, "id")
    if actor is not None and actor.id == user.id:
        raise Conflict("you cannot delete your own account; ask another admin", {"id": "is you"})
    audit.record(actor, "user.delete", "user", user)
    db.session.delete(user)
    db.session.commit()


def _keep_one_admin(user, field):
    others = db.session.scalar(
        select(func.count(User.id)).where(
            User.role == ROLE_ADMIN, User.is_active.is_(True), User.id != user.id
        )
    )
    if not others:
        raise Conflict(
            "this is the last active admin; make another admin first", {field: "last active admin"}
        )
