from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField
from wtforms.validators import AnyOf, Optional


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
