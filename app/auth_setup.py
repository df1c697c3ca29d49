"""Flask-Login wiring: sessions resolve to users through id and session nonce."""
from app.access import by_id
from app.extensions import db
from app.models import User


def init_app(app, login_manager):
    login_manager.init_app(app)
    login_manager.login_view = "ui.login"
    login_manager.session_protection = "strong"

    login_manager.user_loader(user_for_session)


def user_for_session(session_id):
    """The user a session belongs to, or None once it has ended."""
    user_id, _, nonce = session_id.partition(":")
    if not user_id.isdigit():
        return None
    user = db.session.execute(by_id(User), {"obj_id": int(user_id)}).scalar_one_or_none()
    # A changed nonce (password change, deactivation) ends every old session.
    if user is None or not user.is_active or user.session_nonce != nonce:
        return None
    return user

