from flask_wtf import FlaskForm
from wtforms import StringField


class TokenCreateForm(FlaskForm):
    # Length and content rules live in portal.tokens, shared with the CLI.
    name = StringField("Token name")


class TokenRevokeForm(FlaskForm):
    pass
