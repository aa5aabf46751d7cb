import sys

import click
from flask.cli import with_appcontext

from portal import audit
from portal.extensions import db
from portal.users import UserError, create_user, find_user, set_password


@click.group()
def user():
    """Manage portal users."""


@user.command("create")
@click.argument("name")
@click.option("--role", required=True, help="Role name, such as Administrator, Support or Clinician.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@with_appcontext
def create(name: str, role: str, password_stdin: bool):
    """Create user NAME with ROLE, prompting for the password unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)

    try:
        account = create_user(db.session, name, role, password)
    except UserError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None

    audit.record("user.create", "user", account.username, after={"role": role})
    db.session.commit()
    click.echo(f"Created user {account.username} with role {role}.")


@user.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@with_appcontext
def set_user_password(name: str, password_stdin: bool):
    """Set a new password for user NAME and end their sessions, for example a locked-out administrator."""
    account = find_user(db.session, name)
    if account is None:
        raise click.ClickException(f"user {name!r} not found")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)

    try:
        set_password(account, password)
    except UserError as error:
        raise click.ClickException(str(error)) from None

    audit.record("user.password_reset", "user", account.username)
    db.session.commit()
    click.echo(f"Set a new password for {account.username}; their sessions have ended.")
