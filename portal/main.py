"""The home page and the health check."""

from flask import Blueprint, jsonify, redirect, render_template, url_for
from flask_login import current_user, login_required
from sqlalchemy import text

from portal.extensions import db
from portal.models import Permission

bp = Blueprint("main", __name__)


@bp.get("/")
@login_required
def index():
    if current_user.can(Permission.INTEGRATIONS_MANAGE):
        return redirect(url_for("identities.index"))
    if current_user.can(Permission.USAGE_VIEW):
        return redirect(url_for("usage.index"))
    return render_template("index.html")


@bp.get("/healthz")
def healthz():
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as error:  # any database failure means "not healthy"
        return jsonify(status="error", database=str(error.__class__.__name__)), 503
    return jsonify(status="ok", database="ok")
