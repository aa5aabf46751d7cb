from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, SelectField, StringField
from wtforms.validators import AnyOf, DataRequired, EqualTo, Length

from portal.models import Permission
from portal.users import MIN_PASSWORD_LENGTH

PASSWORD_RULE = Length(min=MIN_PASSWORD_LENGTH, max=256,
                       message=f"Use at least {MIN_PASSWORD_LENGTH} characters.")
MATCH_RULE = EqualTo("password", message="The two passwords differ.")
BOOLEAN_VALUES = AnyOf(["true", "false"], message="must be true or false")


class UserCreateForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    role = SelectField("Role", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired(), PASSWORD_RULE])
    confirm = PasswordField("Repeat the password", validators=[DataRequired(), MATCH_RULE])


class UserRoleForm(FlaskForm):
    role = SelectField("Role", validators=[DataRequired()])


class UserEnabledForm(FlaskForm):
    enabled = HiddenField(validators=[BOOLEAN_VALUES])


class PasswordResetForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), PASSWORD_RULE])
    confirm = PasswordField("Repeat the new password", validators=[DataRequired(), MATCH_RULE])


class OwnPasswordForm(PasswordResetForm):
    current = PasswordField("Current password", validators=[DataRequired()])


class DeleteForm(FlaskForm):
    pass


class RoleNameForm(FlaskForm):
    name = StringField("Role name", validators=[DataRequired(), Length(max=64)])


class RolePermissionForm(FlaskForm):
    permission = HiddenField(validators=[AnyOf([item.value for item in Permission],
                                               message="unknown permission")])
    granted = HiddenField(validators=[BOOLEAN_VALUES])
