from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import HiddenField, SelectMultipleField, StringField, TextAreaField
from wtforms.validators import AnyOf, Optional

from portal.identities.service import OPERATION_LABELS, PRESETS


class IdentityForm(FlaskForm):
    # Length and content rules live in the identity service, shared with the CLI.
    name = StringField("Name")
    ae_title = StringField("AE Title")


class EnabledForm(FlaskForm):
    """The enable and disable toggle. `fragment` names the markup that htmx gets back."""

    enabled = HiddenField(validators=[AnyOf(["true", "false"], message="must be true or false")])
    fragment = HiddenField(validators=[Optional(), AnyOf(["row", "status"], message="unknown fragment")])


class DeleteForm(FlaskForm):
    pass


class NetworksForm(FlaskForm):
    # Each entry is validated by portal.networks, shared with the CLI and the API.
    networks = TextAreaField("Allowed source networks")


class PermittedForm(FlaskForm):
    """The permitted request types of an identity: ticked checkboxes, or a preset that replaces them."""

    permitted = SelectMultipleField(
        "Permitted requests",
        choices=[(name, label) for name, label in OPERATION_LABELS.items()],
        validate_choice=True,
    )
    preset = HiddenField(validators=[Optional(), AnyOf(list(PRESETS), message="unknown preset")])


class TlsSettingForm(FlaskForm):
    """One TLS toggle of an identity: which setting, and its new value."""

    setting = HiddenField(validators=[AnyOf(["allow_anonymous_tls", "require_tls"], message="unknown TLS setting")])
    value = HiddenField(validators=[AnyOf(["true", "false"], message="must be true or false")])


class ClientCertificateForm(FlaskForm):
    """A device certificate to bind: pasted PEM text or an uploaded PEM or DER file."""

    certificate_text = TextAreaField("Paste the certificate (PEM)")
    certificate_file = FileField("or upload a certificate file (.pem, .crt, .cer or .der)")


class CertificateDownloadForm(FlaskForm):
    token = HiddenField()
    file_format = HiddenField(validators=[AnyOf(["p12", "pem"], message="unknown format")])



class RetrieveForm(FlaskForm):
    # Host and port rules live in the identity service, shared with the CLI and the API.
    retrieve_host = StringField("Host")
    retrieve_port = StringField("Port")
