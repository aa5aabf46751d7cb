"""What `make run` prints: the welcome lines, or the error when a port is taken."""

import socket

import pytest

from portal.launcher import child_commands, main, print_welcome
from portal.settings import Settings
from tests.conftest import free_port


def test_welcome_shows_new_password_once(tmp_path, capsys):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})

    print_welcome(settings, "new-password")

    output = capsys.readouterr().out
    assert "Password:      new-password" in output
    assert f"(shown once; also in {tmp_path / 'initial-admin-password'})" in output


def test_welcome_points_to_password_file_on_later_start(tmp_path, capsys):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    (tmp_path / "initial-admin-password").write_text("first-password\n")

    print_welcome(settings, None)

    output = capsys.readouterr().out
    assert f"was written to {tmp_path / 'initial-admin-password'}" in output
    assert "first-password" not in output


def test_welcome_without_password_file(tmp_path, capsys):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})

    print_welcome(settings, None)

    output = capsys.readouterr().out
    assert "Sign in with an existing administrator account." in output
    assert "initial-admin-password" not in output


@pytest.mark.parametrize("port_setting", ["PORTAL_PORT", "DICOM_PORT", "DICOM_TLS_PORT"])
def test_port_in_use_stops_before_welcome(tmp_path, monkeypatch, capsys, port_setting):
    ports = {name: str(free_port()) for name in ["PORTAL_PORT", "DICOM_PORT", "DICOM_TLS_PORT"]}
    for name, value in {"DATA_DIR": str(tmp_path), "PORTAL_HOST": "127.0.0.1", "DICOM_HOST": "127.0.0.1",
                        **ports}.items():
        monkeypatch.setenv(name, value)
    occupant = socket.create_server(("127.0.0.1", int(ports[port_setting])))

    with occupant:
        status = main()

    output = capsys.readouterr()
    assert status == 2
    assert f"error: cannot listen on 127.0.0.1:{ports[port_setting]}" in output.err
    assert f"or set {port_setting.split('_')[0]}_HOST and {port_setting}" in output.err
    # No administrator was created, and no password shown.
    assert output.out == ""
    assert not (tmp_path / "initial-admin-password").exists()


def test_portal_without_shared_control_socket(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "PORTAL_HOST": "::1", "PORTAL_PORT": "8081"})

    portal = child_commands(settings)["portal"]

    assert portal[portal.index("--bind") + 1] == "[::1]:8081"
    assert "--no-control-socket" in portal
