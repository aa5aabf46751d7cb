import logging

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user
from sqlalchemy import select

from portal import audit
from portal.accounts import bp
from portal.accounts.forms import (
    DeleteForm,
    OwnPasswordForm,
    PasswordResetForm,
    RoleNameForm,
    RolePermissionForm,
    UserCreateForm,
    UserEnabledForm,
    UserRoleForm,
)
from portal.extensions import db
from portal.htmx import is_htmx_request, vary_on_htmx
from portal.models import Permission, Role, User
from portal.permissions import permission_required
from portal.roles import PERMISSION_LABELS, RoleError, create_role, delete_role, rename_role, set_permission
from portal.users import (
    UserError,
    authenticate,
    create_user,
    delete_user,
    set_password,
    set_user_enabled,
    set_user_role,
)

log = logging.getLogger(__name__)


def get_user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


def get_role_or_404(role_id: int) -> Role:
    role = db.session.get(Role, role_id)
    if role is None:
        abort(404)
    return role


def role_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in db.session.scalars(select(Role.name).order_by(Role.name))]


def user_summary(user: User) -> dict:
    return {"username": user.username, "role": user.role.name, "enabled": user.enabled}


@bp.get("/settings/users")
@permission_required(Permission.USERS_MANAGE)
def users():
    accounts = db.session.scalars(select(User).order_by(User.username)).all()
    return render_template("accounts/users.html", users=accounts)


@bp.route("/settings/users/new", methods=["GET", "POST"])
@permission_required(Permission.USERS_MANAGE)
def new_user():
    form = UserCreateForm()
    form.role.choices = role_choices()
    if request.method == "GET" and "Clinician" in dict(form.role.choices):
        # Least privilege unless the administrator chooses otherwise.
        form.role.data = "Clinician"
    if form.validate_on_submit():
        try:
            user = create_user(db.session, form.username.data.strip(), form.role.data, form.password.data)
        except UserError as error:
            db.session.rollback()
            form.username.errors.append(str(error))
        else:
            db.session.flush()
            audit.record("user.create", "user", user.username, after=user_summary(user))
            db.session.commit()
            log.info("user %s created by %s", user.username, current_user.username)
            flash(f"Created user {user.username}.", "success")
            return redirect(url_for("accounts.user", user_id=user.id))

    status = 422 if form.errors else 200
    return render_template("accounts/new_user.html", form=form), status


@bp.get("/settings/users/<id:user_id>")
@permission_required(Permission.USERS_MANAGE)
def user(user_id: int):
    account = get_user_or_404(user_id)
    role_form = UserRoleForm(role=account.role.name)
    role_form.role.choices = role_choices()
    return render_template("accounts/user.html", user=account, role_form=role_form,
                           enabled_form=UserEnabledForm(), password_form=PasswordResetForm(),
                           delete_form=DeleteForm())


def apply_user_change(account: User, action: str, change) -> None:
    """Run `change`, then audit and commit it, or flash why it was refused."""
    before = user_summary(account)
    try:
        change()
    except UserError as error:
        db.session.rollback()
        flash(str(error), "error")
        return
    audit.record(action, "user", account.username, before=before, after=user_summary(account))
    db.session.commit()
    log.info("%s on user %s by %s", action, account.username, current_user.username)
    flash(f"Saved the changes to {account.username}.", "success")


@bp.post("/settings/users/<id:user_id>/role")
@permission_required(Permission.USERS_MANAGE)
def set_role(user_id: int):
    account = get_user_or_404(user_id)
    form = UserRoleForm()
    form.role.choices = role_choices()
    if not form.validate_on_submit():
        abort(400)
    apply_user_change(account, "user.role", lambda: set_user_role(db.session, account, form.role.data))
    return redirect(url_for("accounts.user", user_id=account.id))


@bp.post("/settings/users/<id:user_id>/enabled")
@permission_required(Permission.USERS_MANAGE)
def set_enabled(user_id: int):
    account = get_user_or_404(user_id)
    form = UserEnabledForm()
    if not form.validate_on_submit():
        abort(400)
    enabled = form.enabled.data == "true"
    action = "user.enable" if enabled else "user.disable"
    apply_user_change(account, action, lambda: set_user_enabled(db.session, account, enabled))
    return redirect(url_for("accounts.user", user_id=account.id))


@bp.post("/settings/users/<id:user_id>/password")
@permission_required(Permission.USERS_MANAGE)
def reset_password(user_id: int):
    account = get_user_or_404(user_id)
    form = PasswordResetForm()
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for message in errors:
                flash(f"Password not changed: {message}", "error")
        return redirect(url_for("accounts.user", user_id=account.id))
    # The audit trail records that the password changed, never the password.
    apply_user_change(account, "user.password_reset", lambda: set_password(account, form.password.data))
    return redirect(url_for("accounts.user", user_id=account.id))


@bp.post("/settings/users/<id:user_id>/delete")
@permission_required(Permission.USERS_MANAGE)
def remove_user(user_id: int):
    account = get_user_or_404(user_id)
    if not DeleteForm().validate_on_submit():
        abort(400)

    before = user_summary(account)
    try:
        delete_user(db.session, account)
    except UserError as error:
        db.session.rollback()
        flash(str(error), "error")
        return redirect(url_for("accounts.user", user_id=account.id))

    audit.record("user.delete", "user", before["username"], before=before)
    db.session.commit()
    flash(f"Deleted user {before['username']}.", "success")
    return redirect(url_for("accounts.users"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def own_password():
    form = OwnPasswordForm()
    if form.validate_on_submit():
        if authenticate(db.session, current_user.username, form.current.data) is None:
            form.current.errors.append("The current password is wrong.")
        else:
            set_password(current_user, form.password.data)
            audit.record("user.password_change", "user", current_user.username)
            db.session.commit()
            # The new session token signs out every other session. This one
            # signs in again so that it stays open.
            login_user(current_user._get_current_object())
            flash("Your password has been changed. Other sessions have been signed out.", "success")
            return redirect(url_for("main.index"))
    status = 422 if form.errors else 200
    return render_template("accounts/own_password.html", form=form), status


@bp.get("/settings/roles")
@permission_required(Permission.USERS_MANAGE)
def roles():
    return render_template("accounts/roles.html", roles=all_roles(), create_form=RoleNameForm(),
                           labels=PERMISSION_LABELS)


def all_roles() -> list[Role]:
    return db.session.scalars(select(Role).order_by(Role.name)).all()


@bp.post("/settings/roles")
@permission_required(Permission.USERS_MANAGE)
def new_role():
    form = RoleNameForm()
    if form.validate_on_submit():
        try:
            role = create_role(db.session, form.name.data)
        except RoleError as error:
            db.session.rollback()
            form.name.errors.append(str(error))
        else:
            audit.record("role.create", "role", role.name, after={"name": role.name, "permissions": []})
            db.session.commit()
            flash(f"Created role {role.name}. Grant its permissions below.", "success")
            return redirect(url_for("accounts.roles"))
    return render_template("accounts/roles.html", roles=all_roles(), create_form=form,
                           labels=PERMISSION_LABELS), 422


@bp.post("/settings/roles/<id:role_id>/name")
@permission_required(Permission.USERS_MANAGE)
def rename(role_id: int):
    role = get_role_or_404(role_id)
    form = RoleNameForm()
    before = role.name
    try:
        if not form.validate_on_submit():
            raise RoleError("a role name is required")
        rename_role(db.session, role, form.name.data)
    except RoleError as error:
        db.session.rollback()
        flash(f"Role not renamed: {error}", "error")
        return redirect(url_for("accounts.roles"))

    audit.record("role.rename", "role", role.name, before={"name": before}, after={"name": role.name})
    db.session.commit()
    flash(f"Renamed role {before} to {role.name}.", "success")
    return redirect(url_for("accounts.roles"))


@bp.post("/settings/roles/<id:role_id>/permissions")
@permission_required(Permission.USERS_MANAGE)
def set_role_permission(role_id: int):
    role = get_role_or_404(role_id)
    form = RolePermissionForm()
    if not form.validate_on_submit():
        abort(400)

    permission = Permission(form.permission.data)
    before = {"permissions": list(role.permissions)}
    error = None
    try:
        set_permission(db.session, role, permission, form.granted.data == "true")
    except RoleError as failure:
        db.session.rollback()
        error = str(failure)
    else:
        audit.record("role.permissions", "role", role.name, before=before,
                     after={"permissions": list(role.permissions)})
        db.session.commit()

    if is_htmx_request():
        # A refused change comes back as a fragment with the message, because
        # htmx does not swap error responses.
        fragment = render_template("accounts/_role_row.html", role=role, labels=PERMISSION_LABELS, error=error)
        return vary_on_htmx(make_response(fragment))
    flash(error or f"Saved the permissions of {role.name}.", "error" if error else "success")
    return redirect(url_for("accounts.roles"))


@bp.post("/settings/roles/<id:role_id>/delete")
@permission_required(Permission.USERS_MANAGE)
def remove_role(role_id: int):
    role = get_role_or_404(role_id)
    if not DeleteForm().validate_on_submit():
        abort(400)
    name = role.name
    try:
        delete_role(db.session, role)
    except RoleError as error:
        db.session.rollback()
        flash(str(error), "error")
        return redirect(url_for("accounts.roles"))
    audit.record("role.delete", "role", name, before={"name": name})
    db.session.commit()
    flash(f"Deleted role {name}.", "success")
    return redirect(url_for("accounts.roles"))
