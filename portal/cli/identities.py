import json

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from portal import audit
from portal.extensions import db
from portal.identities.service import (
    IdentityValidationError,
    create_identity,
    find_by_ae_title,
    parse_operations,
    update_identity,
)
from portal.models import DicomIdentity

OPTION_FIELDS = {
    "name": "--name",
    "ae_title": "--ae-title",
    "permitted": "--permit",
    "retrieve_host": "--retrieve-host",
    "retrieve_port": "--retrieve-port",
}


class OperationList(click.ParamType):
    name = "operations"

    def convert(self, value, param, ctx):
        try:
            return parse_operations(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def identity_options(command):
    """Add the options shared by `identity create` and `identity update`."""
    options = [
        click.option("--name", help="Display name shown throughout the portal."),
        click.option("--allow-anonymous-tls/--no-allow-anonymous-tls", default=None,
                     help="Accept TLS connections without a client certificate."),
        click.option("--require-tls/--no-require-tls", default=None,
                     help="Reject this identity on the plain DICOM port."),
        click.option("--disabled/--enabled", "disabled", default=None,
                     help="Create or set the identity disabled (rejected like an unknown AE title)."),
        click.option("--permit", type=OperationList(),
                     help="Comma-separated operations: echo,store,find,move,get,commit."),
        click.option("--retrieve-host", help="Host that C-MOVE sends this device's retrievals to."),
        click.option("--retrieve-port", type=click.IntRange(1, 65535), help="Port for --retrieve-host."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _changes(name, allow_anonymous_tls, require_tls, disabled, permit, retrieve_host, retrieve_port) -> dict:
    changes = {
        "name": name,
        "allow_anonymous_tls": allow_anonymous_tls,
        "require_tls": require_tls,
        "enabled": None if disabled is None else not disabled,
        "permitted": permit,
        "retrieve_host": retrieve_host,
        "retrieve_port": retrieve_port,
    }
    return {field: value for field, value in changes.items() if value is not None}


def _fail(error: IdentityValidationError):
    db.session.rollback()
    messages = [f"{OPTION_FIELDS.get(field, field)}: {message}" for field, message in error.errors.items()]
    raise click.ClickException("\n".join(messages))


def _get(ae_title: str) -> DicomIdentity:
    identity = find_by_ae_title(db.session, ae_title)
    if identity is None:
        raise click.ClickException(f"no identity with AE title {ae_title!r}: `portal identity list` shows them")
    return identity


@click.group()
def identity():
    """Manage DICOM identities: the devices allowed to connect."""


@identity.command("create")
@click.option("--ae-title", required=True, help="AE title the device calls with (at most 16 characters).")
@identity_options
@with_appcontext
def create(ae_title, name, **options):
    """Create a DICOM identity."""
    if name is None:
        raise click.UsageError("Missing option '--name'.")
    changes = _changes(name, **options)
    try:
        created = create_identity(db.session, ae_title=ae_title, **changes)
    except IdentityValidationError as error:
        _fail(error)

    audit.record("identity.create", "dicom_identity", created.ae_title, after=created.to_dict())
    db.session.commit()
    click.echo(f"Created identity {created.name} with AE title {created.ae_title}.")


@identity.command("update")
@click.argument("ae_title")
@click.option("--ae-title", "new_ae_title", help="New AE title.")
@identity_options
@with_appcontext
def update(ae_title, new_ae_title, name, **options):
    """Change the settings of the identity with AE_TITLE."""
    target = _get(ae_title)
    changes = _changes(name, **options)
    if new_ae_title is not None:
        changes["ae_title"] = new_ae_title
    if not changes:
        raise click.UsageError("Nothing to change: give at least one option.")

    before = target.to_dict()
    try:
        update_identity(db.session, target, **changes)
    except IdentityValidationError as error:
        _fail(error)

    audit.record("identity.update", "dicom_identity", target.ae_title, before=before, after=target.to_dict())
    db.session.commit()
    click.echo(f"Updated identity {target.name} ({target.ae_title}).")


@identity.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_appcontext
def list_identities(as_json: bool):
    """List identities with their usage summary."""
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    if as_json:
        click.echo(json.dumps([item.to_dict() for item in identities], indent=2))
        return

    if not identities:
        click.echo("No identities. Create one with `portal identity create --name NAME --ae-title AET`.")
        return
    row = "{:<16}  {:<28}  {:<16}  {:<25}  {:>9}  {:>9}"
    click.echo(row.format("AE TITLE", "NAME", "STATUS", "LAST SEEN", "ACCEPTED", "INSTANCES"))
    for item in identities:
        last_seen = item.last_seen_at.isoformat(timespec="seconds") if item.last_seen_at else "never"
        click.echo(row.format(item.ae_title, item.name[:28], item.status, last_seen,
                              item.associations_accepted, item.instances_received))


@identity.command("show")
@click.argument("ae_title")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_appcontext
def show(ae_title: str, as_json: bool):
    """Show one identity with its usage summary."""
    details = _get(ae_title).to_dict()
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for field, value in details.items():
        if isinstance(value, list):
            value = ",".join(value)
        click.echo(f"{field + ':':<24}{value if value is not None else '-'}")


def _set_enabled(ae_title: str, enabled: bool) -> None:
    target = _get(ae_title)
    if target.enabled != enabled:
        audit.record("identity.enable" if enabled else "identity.disable", "dicom_identity",
                     target.ae_title, before={"enabled": target.enabled}, after={"enabled": enabled})
        target.enabled = enabled
        db.session.commit()
    click.echo(f"Identity {target.name} ({target.ae_title}) is {'enabled' if enabled else 'disabled'}.")


@identity.command("enable")
@click.argument("ae_title")
@with_appcontext
def enable(ae_title: str):
    """Enable the identity with AE_TITLE."""
    _set_enabled(ae_title, True)


@identity.command("disable")
@click.argument("ae_title")
@with_appcontext
def disable(ae_title: str):
    """Disable the identity with AE_TITLE: its associations are rejected."""
    _set_enabled(ae_title, False)


@identity.command("delete")
@click.argument("ae_title")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def delete(ae_title: str, yes: bool):
    """Delete the identity with AE_TITLE. Its association log stays."""
    target = _get(ae_title)
    if not yes:
        click.confirm(f"Delete identity {target.name} ({target.ae_title})?", abort=True)

    before = target.to_dict()
    db.session.delete(target)
    audit.record("identity.delete", "dicom_identity", before["ae_title"], before=before)
    db.session.commit()
    click.echo(f"Deleted identity {before['name']} ({before['ae_title']}).")
