"""Portal pages for CSV import and export of DICOM identities."""

import io
import logging

from flask import Response, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import HiddenField
from wtforms.validators import DataRequired

from portal.extensions import db
from portal.identities import bp
from portal.identities.transfer import ImportFileError, decode_upload, export_csv, plan_import
from portal.models import Permission
from portal.permissions import permission_required

log = logging.getLogger(__name__)


class ImportUploadForm(FlaskForm):
    file = FileField("CSV file", validators=[FileRequired("Choose a CSV file to import.")])


class ImportConfirmForm(FlaskForm):
    """Carries the uploaded text from the preview to the confirmation, so pages work without JavaScript."""

    csv_text = HiddenField(validators=[DataRequired("The import data is missing: upload the file again.")])


@bp.get("/export.csv")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def export():
    buffer = io.StringIO()
    export_csv(db.session, buffer)
    response = Response(buffer.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="dicom-identities.csv"'
    return response


@bp.route("/import", methods=["GET", "POST"])
@permission_required(Permission.INTEGRATIONS_MANAGE)
def import_upload():
    form = ImportUploadForm()
    if not form.validate_on_submit():
        status = 422 if form.errors else 200
        return render_template("identities/import.html", form=form), status

    try:
        text = decode_upload(form.file.data.read())
        plan = plan_import(db.session, text)
    except ImportFileError as error:
        form.file.errors.append(str(error))
        return render_template("identities/import.html", form=form), 422
    finally:
        db.session.rollback()

    return render_template("identities/import_preview.html", plan=plan,
                           confirm=ImportConfirmForm(csv_text=text))


@bp.post("/import/confirm")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def import_confirm():
    form = ImportConfirmForm()
    if not form.validate_on_submit():
        flash("Nothing imported: the import data is missing. Upload the file again.", "error")
        return redirect(url_for("identities.import_upload"))

    try:
        plan = plan_import(db.session, form.csv_text.data)
    except ImportFileError as error:
        db.session.rollback()
        flash(f"Nothing imported: {error}.", "error")
        return redirect(url_for("identities.import_upload"))

    if plan.rejected:
        # The identities changed after the preview was shown.
        db.session.rollback()
        flash("Nothing imported: some rows are rejected now. Check the preview again.", "error")
        return render_template("identities/import_preview.html", plan=plan, confirm=form), 409

    db.session.commit()
    log.info("identity import by %s: %s", current_user.username, plan.summary())
    flash(f"Imported DICOM identities: {plan.summary()}.", "success")
    return redirect(url_for("identities.index"))
