import json

import click
from flask.cli import with_appcontext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from portal import audit
from portal.extensions import db
from portal.identities.service import (
    IdentityValidationError,
    create_identity,
    parse_operations,
    update_identity,
)
from portal.identities.transfer import (
    MAX_IMPORT_BYTES,
    ImportFileError,
    ImportPlan,
    decode_upload,
    export_csv,
    plan_import,
)
from portal.identity_lookup import find_by_ae_title
from portal.models import DicomIdentity
from portal.networks import split_entries

OPTION_FIELDS = {
    "name": "--name",
    "ae_title": "--ae-title",
    "permitted": "--permit",
    "retrieve_host": "--retrieve-host",
    "retrieve_port": "--retrieve-port",
    "allowed_networks": "--allow-from",
}


class OperationList(click.ParamType):
    name = "operations"

    def convert(self, value, param, ctx):
        try:
            return parse_operations(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def identity_options(*, name_required: bool):
    """Return a decorator that adds the options shared by `identity create` and `identity update`."""
    options = [
        click.option("--name", required=name_required, help="Display name shown throughout the portal."),
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
        click.option("--allow-from", help="Comma-separated source addresses or CIDR ranges the device may "
                                          "connect from, such as 10.1.4.0/24,fd00::/64; \"\" allows any address."),
    ]

    def add_options(command):
        for option in reversed(options):
            command = option(command)
        return command

    return add_options


def _changes(name, allow_anonymous_tls, require_tls, disabled, permit, retrieve_host, retrieve_port,
             allow_from) -> dict:
    changes = {
        "allowed_networks": None if allow_from is None else split_entries(allow_from),
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
@identity_options(name_required=True)
@with_appcontext
def create(ae_title, name, **options):
    """Create a DICOM identity."""
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
@identity_options(name_required=False)
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


@identity.command("export")
@click.argument("output", type=click.File("w", encoding="utf-8"), default="-")
@with_appcontext
def export(output):
    """Write every identity as CSV to OUTPUT (default: standard output).

    The format is the one `portal identity import` reads.
    """
    count = export_csv(db.session, output)
    if output.name != "<stdout>":
        click.echo(f"Exported {count} identities to {output.name}.", err=True)


@identity.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--yes", is_flag=True, help="Import without asking for confirmation.")
@with_appcontext
def import_identities(path: str, yes: bool):
    """Create and update identities from the CSV file PATH, matched by exact AE title.

    Prints what each row would do first. Nothing is written if any row is
    rejected or the import fails part way.
    """
    with open(path, "rb") as handle:
        data = handle.read(MAX_IMPORT_BYTES + 1)
    try:
        text = decode_upload(data)
    except ImportFileError as error:
        raise click.ClickException(f"{path}: {error}") from None
    plan = _plan_import(path, text)
    db.session.rollback()

    echo_import_plan(plan)
    if plan.rejected:
        raise click.ClickException("Nothing imported: fix the rejected rows and run the import again.")
    if plan.changes == 0:
        click.echo("Nothing to import: every row matches its identity.")
        return
    if not yes:
        click.confirm(f"Import {plan.summary()}?", abort=True)

    # Planned again in the transaction that commits, in case the identities
    # changed while the user read the preview.
    applied = _plan_import(path, text)
    if applied.rejected:
        db.session.rollback()
        echo_import_plan(applied)
        raise click.ClickException("Nothing imported: the identities changed since the preview.")
    db.session.commit()
    click.echo(f"Imported: {applied.summary()}.")


def _plan_import(path: str, text: str) -> ImportPlan:
    """Plan the import in the session. On failure, roll back and exit with the reason."""
    try:
        return plan_import(db.session, text)
    except ImportFileError as error:
        db.session.rollback()
        raise click.ClickException(f"{path}: {error}") from None
    except SQLAlchemyError as error:
        db.session.rollback()
        raise click.ClickException(f"Nothing imported: the database failed ({error.orig or error}).") from None


def echo_import_plan(plan: ImportPlan) -> None:
    row = "{:>5}  {:<9}  {:<16}  {}"
    click.echo(row.format("LINE", "ACTION", "AE TITLE", "NAME / DETAILS"))
    for item in plan.rows:
        click.echo(row.format(item.line, item.action, item.ae_title[:16], item.name))
        for field, message in item.details.items():
            click.echo(f"{'':>35}{field}: {message}")
    click.echo(f"{plan.summary()}.")
