"""The portal: a Flask app for administrators and support staff."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from portal.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    """Create the portal app from `settings` (default: the environment)."""
    # Flask and its extensions are imported here, not with the package:
    # dicomd's workers import the portal's models and settings, and would
    # otherwise load the whole web stack into every worker.
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from portal.converters import RowIdConverter
    from portal.database import MIGRATIONS_DIR, configure_engine, engine_options, ensure_sqlite_directory
    from portal.extensions import csrf, db, limiter, login_manager, migrate

    settings = settings or Settings.from_env()

    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder="static",
    )
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key(),
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        RATELIMIT_HEADERS_ENABLED=False,
    )
    app.config.update(overrides)
    app.url_map.converters["id"] = RowIdConverter
    if settings.trusted_proxies:
        # Behind nginx or another reverse proxy, take the client address and
        # scheme from the proxies' X-Forwarded headers, for the audit trail,
        # sign-in throttling and Secure cookies.
        count = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)

    ensure_sqlite_directory(settings.database_url)
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Sign in to open this page."
    login_manager.login_message_category = "info"

    from portal import accounts, api, audit, auth, errors, identities, main, profile, security, templating, usage
    from portal.cli import register_commands

    app.register_blueprint(main.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(identities.bp)
    app.register_blueprint(accounts.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(profile.bp)
    errors.register(app)
    security.register(app, settings.session_idle_minutes)
    templating.register(app)
    register_commands(app)
    return app
