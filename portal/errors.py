"""Error pages. A failed request rolls the database session back."""

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError

from portal.extensions import db


def register(app: Flask) -> None:
    @app.errorhandler(403)
    def forbidden(error):
        return render_template("errors/403.html", permission=error.description), 403

    @app.errorhandler(404)
    def not_found(error):
        return render_template("errors/404.html"), 404

    @app.errorhandler(CSRFError)
    def csrf_failed(error):
        return render_template("errors/400.html", message=error.description), 400

    @app.errorhandler(500)
    def internal_error(error):
        db.session.rollback()
        return render_template("errors/500.html"), 500
