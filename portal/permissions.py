"""Permission checks for views."""

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from portal.models import Permission


def permission_required(permission: Permission):
    """Require a signed-in user whose role has `permission`; others get 403."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if not current_user.can(permission):
                abort(403, description=permission.value)
            return view(*args, **kwargs)

        return wrapped

    return decorator
