"""The `portal` console script: the Flask CLI of the app, with its own commands."""

import click
from flask import Flask
from flask.cli import FlaskGroup

from portal.cli.identities import identity
from portal.cli import identity_tls  # noqa: F401  (adds `identity certificate …`)
from portal.cli.tokens import token
from portal.cli.usage import usage
from portal.cli.users import user


def register_commands(app: Flask) -> None:
    app.cli.add_command(user)
    app.cli.add_command(identity)
    app.cli.add_command(usage)
    app.cli.add_command(token)


def _create_app():
    from portal import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False, load_dotenv=False)
def main():
    """Manage the DICOM identities portal: database, users and identities."""
