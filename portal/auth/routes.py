import secrets
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal import audit
from portal.auth import bp
from portal.auth.forms import LoginForm
from portal.extensions import db, limiter, login_manager
from portal.models import User, utcnow
from portal.users import authenticate


@login_manager.user_loader
def load_user(session_user_id: str) -> User | None:
    """Return the user whose id and session token are in the session cookie."""
    user_id, _, token = session_user_id.partition(":")
    if not user_id.isdigit() or not token:
        return None
    user = db.session.get(User, int(user_id))
    if user is None or not secrets.compare_digest(user.session_token, token):
        return None
    return user


def safe_next(target: str | None) -> str:
    """Return `target` if it is a path on this site, else the home page."""
    if not target:
        return url_for("main.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("main.index")
    return target


# Failed sign-ins allowed per window before further attempts get HTTP 429.
LOGIN_LIMIT_PER_ACCOUNT = "10 per 15 minutes"
LOGIN_LIMIT_PER_ADDRESS = "30 per 15 minutes"


def login_failed(response) -> bool:
    return response.status_code == 401


def login_account_key() -> str:
    return "account:" + (request.form.get("username") or "").strip().lower()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(LOGIN_LIMIT_PER_ADDRESS, methods=["POST"], deduct_when=login_failed)
@limiter.limit(LOGIN_LIMIT_PER_ACCOUNT, methods=["POST"], deduct_when=login_failed, key_func=login_account_key)
def login():
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))

    form = LoginForm()
    if form.validate_on_submit():
        user = authenticate(db.session, form.username.data, form.password.data)
        if user is None:
            audit.record("auth.login_failed", "user", form.username.data, actor=form.username.data)
            db.session.commit()
            # One message for every failure, so it does not reveal which accounts exist.
            flash("Invalid username or password.", "error")
            return render_template("auth/login.html", form=form), 401

        user.last_login_at = utcnow()
        login_user(user)
        audit.record("auth.login", "user", user.username)
        db.session.commit()
        return redirect(safe_next(request.args.get("next")))

    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["GET", "POST"])
@login_required
def logout():
    # Signing out changes state, so GET only shows the button that posts.
    if request.method == "GET":
        return render_template("auth/logout.html")

    logout_user()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))
