"""Error pages. A failed request rolls the database session back."""

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError
from sqlalchemy import select

from portal.extensions import db
from portal.models import Permission, Role, User

PERMISSION_NAMES = {permission.value for permission in Permission}


def user_managers() -> list[str]:
    """Return the enabled users who can grant permissions, for the 403 page."""
    users = db.session.scalars(select(User).join(Role).where(User.enabled.is_(True)).order_by(User.username))
    return [user.username for user in users if user.can(Permission.USERS_MANAGE)]


def register(app: Flask) -> None:
    @app.errorhandler(403)
    def forbidden(error):
        permission = error.description if error.description in PERMISSION_NAMES else None
        return render_template("errors/403.html", permission=permission, granters=user_managers()), 403

    @app.errorhandler(404)
    def not_found(error):
        return render_template("errors/404.html"), 404

    @app.errorhandler(400)
    def bad_request(error):
        return render_template("errors/400.html", message=error.description), 400

    @app.errorhandler(CSRFError)
    def csrf_failed(error):
        return render_template("errors/400.html", message=error.description), 400

    @app.errorhandler(429)
    def too_many_requests(error):
        return render_template("errors/429.html"), 429

    @app.errorhandler(500)
    def internal_error(error):
        db.session.rollback()
        return render_template("errors/500.html"), 500
