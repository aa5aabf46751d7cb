import logging

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from portal import audit
from portal.extensions import db
from portal.models import ApiToken
from portal.profile import bp
from portal.profile.forms import TokenCreateForm, TokenRevokeForm
from portal.tokens import TokenError, create_token, revoke_token, tokens_of

log = logging.getLogger(__name__)


@bp.get("")
@login_required
def index():
    return render_profile(TokenCreateForm())


@bp.post("/tokens")
@login_required
def create():
    form = TokenCreateForm()
    if not form.validate_on_submit():
        return render_profile(form), 400

    try:
        token, secret = create_token(db.session, current_user, form.name.data)
    except TokenError as error:
        db.session.rollback()
        form.name.errors.append(str(error))
        return render_profile(form), 422

    audit.record("token.create", "api_token", f"{current_user.username}/{token.name}",
                 after={"name": token.name, "prefix": token.prefix})
    db.session.commit()
    log.info("API token %r (%s…) created by %s", token.name, token.prefix, current_user.username)
    # Rendered, not redirected: the secret exists only in this response.
    return render_profile(TokenCreateForm(formdata=None), new_secret=secret, new_token=token), 201


@bp.post("/tokens/<id:token_id>/revoke")
@login_required
def revoke(token_id: int):
    token = db.session.get(ApiToken, token_id)
    if token is None or token.user_id != current_user.id:
        abort(404)
    if not TokenRevokeForm().validate_on_submit():
        abort(400)

    if token.active:
        revoke_token(token)
        audit.record("token.revoke", "api_token", f"{current_user.username}/{token.name}",
                     before={"name": token.name, "prefix": token.prefix})
        db.session.commit()
        log.info("API token %r (%s…) revoked by %s", token.name, token.prefix, current_user.username)
    flash(f"Revoked API token {token.name}. Requests that send it now get 401.", "success")
    return redirect(url_for("profile.index"))


def render_profile(form: TokenCreateForm, new_secret: str | None = None, new_token: ApiToken | None = None):
    return render_template("account/index.html", form=form, tokens=tokens_of(db.session, current_user),
                           revoke_form=TokenRevokeForm(), new_secret=new_secret, new_token=new_token)
