"""The welcome lines that `make run` prints."""

from portal.launcher import print_welcome
from portal.settings import Settings


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
