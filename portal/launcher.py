"""Run the whole product in the foreground: what `make run` starts.

Upgrades the database, creates the first administrator when there is none,
then runs the portal under gunicorn and dicomd side by side until Ctrl-C or
SIGTERM, which stops both.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flask_migrate import upgrade

from dicomd.supervisor import StartupError, listen
from portal import ROOT, create_app
from portal.extensions import db
from portal.settings import Settings, SettingsError
from portal.users import ensure_initial_admin

log = logging.getLogger("portal.launcher")

# Seconds the children get to finish after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 20


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Checked before the first administrator's password is created and shown,
    # so that a start that cannot listen shows only the error.
    try:
        check_ports_free(settings)
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    password = prepare_database(settings)
    print_welcome(settings, password)

    return supervise(child_commands(settings))


def child_commands(settings: Settings) -> dict[str, list[str]]:
    """Return the command lines of the portal (gunicorn) and dicomd."""
    bin_dir = Path(sys.executable).parent
    portal_bind = f"[{settings.portal_host}]" if ":" in settings.portal_host else settings.portal_host
    return {
        # gunicorn's control socket defaults to one path per user, which a
        # second portal of the same user would take over. This one is stopped
        # by signals, so it needs none.
        "portal": [str(bin_dir / "gunicorn"), "--bind", f"{portal_bind}:{settings.portal_port}",
                   "--workers", "2", "--access-logfile", "-", "--no-control-socket", "wsgi:app"],
        "dicomd": [str(bin_dir / "dicomd"), "run"],
    }


def check_ports_free(settings: Settings) -> None:
    """Raise StartupError, naming the settings to change, when a port of the portal or dicomd is taken."""
    ports = [
        (settings.portal_host, settings.portal_port, "PORTAL_HOST and PORTAL_PORT"),
        (settings.dicom_host, settings.dicom_port, "DICOM_HOST and DICOM_PORT"),
        (settings.dicom_host, settings.dicom_tls_port, "DICOM_HOST and DICOM_TLS_PORT"),
    ]
    for host, port, settings_to_change in ports:
        listen(host, port, settings_to_change).close()


def prepare_database(settings: Settings) -> str | None:
    """Upgrade the schema and return the first administrator's password if one was created."""
    app = create_app(settings)
    with app.app_context():
        upgrade()
        password = ensure_initial_admin(db.session, settings.data_dir)
        db.engine.dispose()
    return password


def print_welcome(settings: Settings, password: str | None) -> None:
    portal_host = "localhost" if settings.portal_host in ("127.0.0.1", "::1") else settings.portal_host
    lines = [
        "",
        f"Portal:        http://{portal_host}:{settings.portal_port}/",
    ]
    if password:
        lines += [
            "Sign in as:    admin",
            f"Password:      {password}",
            f"               (shown once; also in {settings.data_dir / 'initial-admin-password'})",
        ]
    elif (settings.data_dir / "initial-admin-password").exists():
        # An earlier start created the administrator, possibly one whose portal or dicomd then failed to start.
        lines.append("Sign in with an existing administrator account. The password of the first one, admin, "
                     f"was written to {settings.data_dir / 'initial-admin-password'}.")
    else:
        lines.append("Sign in with an existing administrator account.")
    lines += [
        f"DICOM:         host {settings.dicom_host}, port {settings.dicom_port}, "
        f"called AE title {settings.dicom_ae_title}",
        f"DICOM TLS:     port {settings.dicom_tls_port} (the CA certificate devices trust is on each "
        "identity's page)",
        f"Data:          {settings.data_dir}",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def supervise(commands: dict[str, list[str]]) -> int:
    """Run the commands until one exits or a stop signal arrives, then stop them all."""
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    children = {name: subprocess.Popen(command, cwd=ROOT) for name, command in commands.items()}
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            code = child.poll()
            if code is not None:
                log.error("%s exited with status %s; stopping the others", name, code)
                exit_code = code or 1
                stopping = True
        time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %s seconds; killing it", name, STOP_GRACE_SECONDS)
            child.kill()
            child.wait()
    return exit_code


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
