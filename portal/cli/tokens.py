import click
from flask.cli import with_appcontext

from portal import audit
from portal.extensions import db
from portal.tokens import TokenError, create_token
from portal.users import find_user


@click.group()
def token():
    """Manage API tokens for the JSON API."""


@token.command("create")
@click.argument("username")
@click.option("--name", default="CLI token", show_default=True,
              help="Label that tells this token apart on the user's account page.")
@with_appcontext
def create(username: str, name: str):
    """Create an API token for USERNAME and print it once.

    The token acts with the user's role. Only its hash is stored, so it
    cannot be shown again: copy it now.
    """
    user = find_user(db.session, username)
    if user is None:
        raise click.ClickException(f"no user named {username!r}: `portal user create` adds one")
    try:
        created, secret = create_token(db.session, user, name)
    except TokenError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None

    audit.record("token.create", "api_token", f"{user.username}/{created.name}",
                 after={"name": created.name, "prefix": created.prefix})
    db.session.commit()
    click.echo(secret)
    click.echo(f"Created API token {created.name!r} for {user.username}. It is shown only this once.", err=True)
