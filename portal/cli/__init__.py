"""The `portal` console script: the Flask CLI of the app, with its own commands."""

import functools

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from portal.database import SchemaNotCurrent, check_schema_current
from portal.extensions import db

from portal.cli.identities import identity
from portal.cli import identity_tls  # noqa: F401  (adds `identity certificate …`)
from portal.cli.tokens import token
from portal.cli.usage import usage
from portal.cli.users import user


def register_commands(app: Flask) -> None:
    for group in (user, identity, usage, token):
        _require_current_schema(group)
        app.cli.add_command(group)


def _require_current_schema(command: click.Command) -> None:
    """Make `command`, or each command of a group, stop with the upgrade command on a database not at the latest revision.

    Without this, a command on a new or old database ends in SQLAlchemy's
    traceback. The check runs when the command runs, after its options are
    parsed, so `--help` works on any database.
    """
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _require_current_schema(subcommand)
        return
    callback = command.callback
    if getattr(callback, "checks_schema", False):
        return

    @functools.wraps(callback)
    @with_appcontext
    def checked(*args, **kwargs):
        try:
            check_schema_current(db.engine)
        except SchemaNotCurrent as error:
            raise click.ClickException(str(error)) from error
        return callback(*args, **kwargs)

    checked.checks_schema = True
    command.callback = checked


def _create_app():
    from portal import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False, load_dotenv=False)
def main():
    """Manage the DICOM identities portal: database, users and identities."""
