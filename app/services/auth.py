"""Logins (throttled) and personal API tokens."""
import functools
import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import joinedload

from app.extensions import db
from app.models import SCOPES, ApiToken, LoginFailure, User
from app.models.identity import SCOPE_ADMIN
from app.models.types import utcnow
from app.services import audit
from app.services.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Throttled,
    Unauthorized,
    ValidationFailed,
)
from app.services.passwords import hash_password, verify_password

TOKEN_PREFIX = "nlo_"
# Addresses get more room than one username: several people may share a NAT.
ADDRESS_FACTOR = 4
# Compared against when the username is unknown, so both paths cost one argon2 verification.
_DUMMY_HASH = None


def authenticate(username, password, address):
    """Return the user for a correct password; raise Throttled or Unauthorized otherwise.

    Throttling (issue 17 item 6): failures count per (username, address), so a third party
    guessing `admin`'s password from elsewhere locks only itself out, never the admin at their
    own address; per address over all usernames (password spraying); and a username under
    attack from many addresses slows those addresses down (one attempt per SLOWDOWN_SECONDS)
    without stopping an address that has not failed for it. Each attempt is written before the
    password is checked and counted after that write, so parallel requests cannot all slip
    under the limit: the k-th attempt to commit sees at least k rows."""
    username = (username or "").strip().lower()[:64]
    address = (address or "")[:64]
    attempt = _reserve_attempt(username, address)
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_dummy_hash(), password or "")
        ok = False
    else:
        # Service accounts never log in (their hash is of a secret nobody knows; belt and braces).
        ok = (verify_password(user.password_hash, password or "") and user.is_active
              and not user.is_service_account)
    if not ok:
        # The attempt's row stays: it is this failure.
        audit.record(None, "login.failure", "user", user, target_name=username)
        db.session.commit()
        raise Unauthorized("wrong username or password")
    db.session.execute(delete(LoginFailure).where(
        LoginFailure.username == username, LoginFailure.address == address))
    db.session.execute(delete(LoginFailure).where(LoginFailure.id == attempt))
    user.last_login_at = utcnow()
    audit.record(user, "login.success", "user", user)
    db.session.commit()
    return user


def _dummy_hash():
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH


# Once a username has this many times the per-pair limit of failures in the window, from
# whatever addresses, addresses that failed for it wait this long between attempts.
SLOWDOWN_SECONDS = 2


def _reserve_attempt(username, address):
    """Write this attempt as a failure (committed), then count: refuse (and drop the row) when
    the attempt is over a limit. Returns the row's id."""
    window = timedelta(seconds=current_app.config["NULLOPS_LOGIN_LOCKOUT_SECONDS"])
    limit = current_app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    row = LoginFailure(username=username, address=address)
    db.session.add(row)
    db.session.commit()
    now = utcnow()
    since = now - window

    def counted(*where):
        return db.session.execute(select(func.count(LoginFailure.id), func.min(LoginFailure.at))
                                  .where(LoginFailure.at >= since, *where)).one()

    def refuse(retry_after):
        db.session.execute(delete(LoginFailure).where(LoginFailure.id == row.id))
        db.session.commit()
        raise Throttled(f"too many failed logins; try again in {retry_after} seconds", retry_after)

    for where, allowed in (
        ((LoginFailure.username == username, LoginFailure.address == address), limit),
        ((LoginFailure.address == address,), limit * ADDRESS_FACTOR),
    ):
        count, oldest = counted(*where)
        if count > allowed:  # this attempt's own row is among them
            refuse(max(1, int((oldest + window - now).total_seconds()) + 1))
    under_attack, _ = counted(LoginFailure.username == username)
    if under_attack > limit * ADDRESS_FACTOR:
        failed_here, _ = counted(LoginFailure.username == username, LoginFailure.address == address)
        latest = db.session.scalar(select(func.max(LoginFailure.at)).where(
            LoginFailure.username == username, LoginFailure.id != row.id))
        if failed_here > 1 and latest is not None and now - latest < timedelta(seconds=SLOWDOWN_SECONDS):
            refuse(SLOWDOWN_SECONDS)
    return row.id


def prune_login_failures():
    window = timedelta(seconds=current_app.config["NULLOPS_LOGIN_LOCKOUT_SECONDS"])
    db.session.execute(delete(LoginFailure).where(LoginFailure.at < utcnow() - window))
    db.session.commit()


def _digest(raw):
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create_token(actor, user, name, expires_in_days=None, scope=SCOPE_ADMIN, minted_with=None):
    """Create a token; the secret is returned once, here, and never again.

    `minted_with`: the token the request creating this one came with, if any. A token never
    makes a wider one: not a wider scope, and when it expires, not one that outlives it (an
    expiring token that could mint a non-expiring one would never expire; issue 17 item 3)."""
    name = (name or "").strip()
    if not name or len(name) > 64:
        raise ValidationFailed("name must be 1-64 characters", {"name": "use 1-64 characters"})
    if scope not in SCOPES:
        raise ValidationFailed(f"scope must be one of {', '.join(SCOPES)}",
                               {"scope": f"use one of {', '.join(SCOPES)}"})
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    if minted_with is not None:
        if SCOPES.index(scope) > SCOPES.index(minted_with.scope):
            raise Forbidden(f"a token of scope {minted_with.scope} cannot make one of scope {scope}",
                            {"scope": f"at most {minted_with.scope}"})
        if minted_with.expires_at is not None and (
                expires_at is None or expires_at > minted_with.expires_at):
            raise Forbidden(
                "this request's token expires at "
                f"{minted_with.expires_at.isoformat()}; a token it makes must expire no later",
                {"expires_in_days": "give a number of days that ends before this token expires"})
    taken = db.session.scalar(
        select(ApiToken.id).where(
            ApiToken.user_id == user.id, ApiToken.name == name, ApiToken.revoked_at.is_(None)
        )
    )
    if taken:
        raise Conflict(f"you already have a token named {name!r}; choose another", {"name": "taken"})
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        token_hash=_digest(raw),
        expires_at=expires_at,
        scope=scope,
    )
    db.session.add(token)
    db.session.flush()
    audit.record(actor, "token.create", "api_token", token,
                 {"owner": user.username, "scope": scope,
                  "expires_at": expires_at.isoformat() if expires_at else None})
    db.session.commit()
    return token, raw


def revoke_token(actor, token):
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(actor, "token.revoke", "api_token", token, {"owner": token.user.username})
        db.session.commit()
    return token


def get_token(token_id):
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist")
    return token


@functools.cache
def _token_by_hash():
    """Built once (a statement costs more to build than to run): every API call asks it."""
    return (select(ApiToken).options(joinedload(ApiToken.user))
            .where(ApiToken.token_hash == bindparam("token_hash")))


def user_for_token(raw):
    """The active user behind a bearer token, or Unauthorized with the reason."""
    return token_for_request(raw).user


def token_for_request(raw):
    """The valid token (its user loaded) for a bearer secret, or Unauthorized with the reason."""
    if not raw or not raw.startswith(TOKEN_PREFIX):
        raise Unauthorized("the bearer token is malformed; create one under Settings > API tokens")
    # The user comes in the same query: every API call from a script pays for this lookup.
    token = db.session.scalar(_token_by_hash(), {"token_hash": _digest(raw)})
    # The hash lookup is exact; compare again in constant time for belt and braces.
    if token is None or not hmac.compare_digest(token.token_hash, _digest(raw)):
        raise Unauthorized("the bearer token is unknown")
    if token.revoked_at is not None:
        raise Unauthorized("the bearer token was revoked; create a new one")
    now = utcnow()
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("the bearer token has expired; create a new one")
    if not token.user.is_active:
        raise Unauthorized("the account behind this token is disabled")
    # Write last-use at most once a minute: a busy script should not write on every call.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
        db.session.commit()
    return token
