from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal import audit
from portal.auth import bp
from portal.auth.forms import LoginForm
from portal.extensions import db, login_manager
from portal.models import User, utcnow
from portal.users import authenticate


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


def safe_next(target: str | None) -> str:
    """Return `target` if it is a path on this site, else the home page."""
    if not target:
        return url_for("main.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("main.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
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
