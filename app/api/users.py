"""Accounts: the caller's own profile and tokens, and user administration."""
import secrets

from flask import g, request
from flask_login import current_user

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import (
    LoginTokenCreate,
    MeOut,
    Page,
    Pagination,
    PasswordChange,
    PasswordReset,
    ProfileUpdate,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from app.models import ApiToken, User
from app.services import auth, users
from app.services.errors import Conflict


def _me():
    user = current_user._get_current_object()
    return {**dump(UserOut, user), "teams": [{"id": m.team.id, "name": m.team.name}
                                              for m in user.memberships]}


@operation("GET", "/me", summary="The caller's account and teams", tag="account", response=MeOut)
def get_me():
    return _me()


@operation("PATCH", "/me", summary="Change the caller's display name", tag="account",
           body=ProfileUpdate, response=MeOut)
def update_me(data):
    user = current_user._get_current_object()
    users.update(user, user, full_name=data.full_name)
    return _me()


@operation("POST", "/me/password", summary="Change the caller's password (ends other sessions)",
           tag="account", body=PasswordChange, status=204)
def change_my_password(data):
    user = current_user._get_current_object()
    users.set_password(user, user, data.new_password, current_password=data.current_password)


@operation("GET", "/tokens", summary="The caller's API tokens", tag="account",
           query=Pagination, response=Page[TokenOut])
def list_tokens(params):
    stmt = access.visible(current_user, ApiToken).order_by(ApiToken.id.desc())
    return paginate(stmt, params, TokenOut)


def _token_out(token, raw):
    return {**dump(TokenOut, token), "token": raw}


@operation("POST", "/auth/token", summary="Log in with username and password for an API token "
           "(expiring; throttled like the login form)", tag="account", body=LoginTokenCreate,
           response=TokenCreated, status=201, public=True)
def login_for_token(data):
    # The same throttle and audit as the login form: per username, per address.
    user = auth.authenticate(data.username, data.password, request.remote_addr)
    name = data.name or f"api-login-{secrets.token_hex(3)}"
    token, raw = auth.create_token(user, user, name, data.expires_in_days, data.scope)
    return _token_out(token, raw)


@operation("POST", "/tokens", summary="Create an API token; its secret is shown only once",
           tag="account", body=TokenCreate, response=TokenCreated, status=201)
def create_token(data):
    access.require(current_user, "create", ApiToken)
    user = current_user._get_current_object()
    token, raw = auth.create_token(user, user, data.name, data.expires_in_days, data.scope,
                                   minted_with=g.get("api_token"))
    return _token_out(token, raw)


@operation("DELETE", "/tokens/<int:token_id>", summary="Revoke an API token", tag="account",
           status=204)
def revoke_token(token_id):
    token = access.get_visible(current_user, ApiToken, token_id, "token")
    access.require(current_user, "manage", token)
    auth.revoke_token(current_user._get_current_object(), token)


@operation("GET", "/users", summary="Users (admins see all, others themselves)", tag="users",
           query=Pagination, response=Page[UserOut])
def list_users(params):
    return paginate(access.visible(current_user, User).order_by(User.username), params, UserOut)


@operation("POST", "/users", summary="Create a user", tag="users", body=UserCreate,
           response=UserOut, status=201)
def create_user(data):
    access.require(current_user, "create", User)
    user = users.create(current_user._get_current_object(), data.username, data.password,
                        data.role, data.full_name, data.kind)
    return dump(UserOut, user)


def _service_account(user_id):
    user = access.get_visible(current_user, User, user_id, "user")
    access.require(current_user, "manage", user)
    if not user.is_service_account:
        raise Conflict(f"{user.username} is a person: people make their own tokens (POST /tokens); "
                       "admins issue tokens only for service accounts", {"user_id": "not a service account"})
    return user


@operation("GET", "/users/<int:user_id>/tokens", summary="A service account's API tokens (admins)",
           tag="users", query=Pagination, response=Page[TokenOut])
def list_user_tokens(user_id, params):
    user = _service_account(user_id)
    stmt = access.visible(current_user, ApiToken).where(ApiToken.user_id == user.id)
    return paginate(stmt.order_by(ApiToken.id.desc()), params, TokenOut)


@operation("POST", "/users/<int:user_id>/tokens", summary="Issue an API token for a service "
           "account (admins); its secret is shown only once", tag="users", body=TokenCreate,
           response=TokenCreated, status=201)
def create_user_token(user_id, data):
    user = _service_account(user_id)
    access.require(current_user, "create", ApiToken)
    token, raw = auth.create_token(current_user._get_current_object(), user, data.name,
                                   data.expires_in_days, data.scope, minted_with=g.get("api_token"))
    return _token_out(token, raw)


@operation("GET", "/users/<int:user_id>", summary="One user", tag="users", response=UserOut)
def get_user(user_id):
    return dump(UserOut, access.get_visible(current_user, User, user_id, "user"))


@operation("PATCH", "/users/<int:user_id>", summary="Change a user's name, role or active flag",
           tag="users", body=UserUpdate, response=UserOut)
def update_user(user_id, data):
    user = access.get_visible(current_user, User, user_id, "user")
    access.require(current_user, "manage", user)
    users.update(current_user._get_current_object(), user, data.full_name, data.role, data.is_active)
    return dump(UserOut, user)


@operation("POST", "/users/<int:user_id>/password", summary="Set a user's password",
           tag="users", body=PasswordReset, status=204)
def reset_password(user_id, data):
    user = access.get_visible(current_user, User, user_id, "user")
    access.require(current_user, "manage", user)
    users.set_password(current_user._get_current_object(), user, data.new_password)


@operation("DELETE", "/users/<int:user_id>", summary="Delete a user", tag="users", status=204)
def delete_user(user_id):
    user = access.get_visible(current_user, User, user_id, "user")
    access.require(current_user, "manage", user)
    users.delete(current_user._get_current_object(), user)
