import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import login

PORTAL = str(Path(sys.executable).parent / "portal")


def identities(runner) -> list[dict]:
    result = runner.invoke(args=["identity", "list", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_identity_create_and_list_json(runner):
    result = runner.invoke(args=["identity", "create", "--name", "Cath Lab 2", "--ae-title", " CATH2 "])
    assert result.exit_code == 0, result.output
    [created] = identities(runner)
    assert created["name"] == "Cath Lab 2"
    assert created["ae_title"] == "CATH2"
    assert created["enabled"] is True
    assert created["allow_anonymous_tls"] is False
    assert created["require_tls"] is False
    assert created["permitted"] == ["echo", "store"]
    assert created["last_seen"] is None
    for counter in ("associations_accepted", "associations_rejected", "instances_received", "bytes_received"):
        assert created[counter] == 0


def test_identity_create_all_options(runner):
    result = runner.invoke(args=[
        "identity", "create", "--name", "Reading room", "--ae-title", "WS1", "--allow-anonymous-tls",
        "--require-tls", "--disabled", "--permit", "find, echo,MOVE,get",
        "--retrieve-host", "127.0.0.1", "--retrieve-port", "11113",
    ])
    assert result.exit_code == 0, result.output
    [created] = identities(runner)
    assert created["enabled"] is False
    assert created["allow_anonymous_tls"] is True
    assert created["require_tls"] is True
    assert created["permitted"] == ["echo", "find", "move", "get"]
    assert (created["retrieve_host"], created["retrieve_port"]) == ("127.0.0.1", 11113)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--name", "X", "--ae-title", "SEVENTEEN_CHARS_X"], "--ae-title: an AE title has at most 16 characters"),
        (["--name", "X", "--ae-title", "A\\B"], "backslash"),
        (["--name", "X", "--ae-title", "   "], "at least one character"),
        (["--name", "  ", "--ae-title", "OK1"], "--name: a name is required"),
        (["--ae-title", "OK1"], "Missing option '--name'"),
        (["--name", "X"], "Missing option '--ae-title'"),
        (["--name", "X", "--ae-title", "OK1", "--permit", "echo,delete"], "unknown operation 'delete'"),
        (["--name", "X", "--ae-title", "OK1", "--retrieve-port", "0"], "0 is not in the range 1<=x<=65535"),
        (["--name", "X", "--ae-title", "OK1", "--retrieve-port", "abc"], "'abc' is not a valid integer"),
        (["--name", "X", "--ae-title", "OK1", "--retrieve-host", "h"], "needs both a host and a port"),
        (["--name", "X", "--ae-title", "OK1", "--retrieve-port", "104"], "needs both a host and a port"),
        (["--name", "X", "--ae-title", "OK1", "--retrieve-host", "bad host", "--retrieve-port", "104"], "invalid host"),
        (["--name", "Echo", "--ae-title", "OK1"], "already used"),
        (["--name", "X", "--ae-title", "echo1"], "differs only by case from 'ECHO1', registered as 'Echo'"),
    ],
)
def test_identity_create_invalid(runner, arguments, message):
    assert runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"]).exit_code == 0
    result = runner.invoke(args=["identity", "create", *arguments])
    assert result.exit_code != 0
    assert message in result.output
    assert len(identities(runner)) == 1


def test_identity_update(runner):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    result = runner.invoke(args=["identity", "update", "ECHO1", "--name", "Echo Room 3", "--permit", "echo",
                                 "--ae-title", "ECHO3", "--require-tls"])
    assert result.exit_code == 0, result.output
    [updated] = identities(runner)
    assert (updated["name"], updated["ae_title"], updated["permitted"]) == ("Echo Room 3", "ECHO3", ["echo"])
    assert updated["require_tls"] is True


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["NOPE", "--name", "X"], "no identity with AE title 'NOPE'"),
        (["ECHO1"], "Nothing to change"),
        (["ECHO1", "--ae-title", "cath1"], "differs only by case from 'CATH1'"),
        (["ECHO1", "--permit", "shutdown"], "unknown operation 'shutdown'"),
    ],
)
def test_identity_update_invalid(runner, arguments, message):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    runner.invoke(args=["identity", "create", "--name", "Cath", "--ae-title", "CATH1"])
    result = runner.invoke(args=["identity", "update", *arguments])
    assert result.exit_code != 0
    assert message in result.output
    assert {item["ae_title"] for item in identities(runner)} == {"ECHO1", "CATH1"}


def test_identity_enable_disable_delete(runner):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    assert runner.invoke(args=["identity", "disable", "ECHO1"]).exit_code == 0
    assert identities(runner)[0]["enabled"] is False
    assert runner.invoke(args=["identity", "enable", " ECHO1 "]).exit_code == 0
    assert identities(runner)[0]["enabled"] is True
    assert runner.invoke(args=["identity", "delete", "ECHO1", "--yes"]).exit_code == 0
    assert identities(runner) == []


@pytest.mark.parametrize("command", ["enable", "disable", "delete", "show"])
def test_identity_commands_unknown_ae_title(runner, command):
    result = runner.invoke(args=["identity", command, "echo1"])
    assert result.exit_code != 0
    assert "no identity with AE title 'echo1'" in result.output


def test_identity_delete_asks_first(runner):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    result = runner.invoke(args=["identity", "delete", "ECHO1"], input="n\n")
    assert result.exit_code != 0
    assert len(identities(runner)) == 1


def test_identity_show_json_and_text(runner):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    result = runner.invoke(args=["identity", "show", "ECHO1", "--json"])
    assert json.loads(result.output)["name"] == "Echo"
    text = runner.invoke(args=["identity", "show", "ECHO1"]).output
    assert "ae_title:" in text
    assert "ECHO1" in text


def test_identity_list_text(runner):
    assert "No identities" in runner.invoke(args=["identity", "list"]).output
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    output = runner.invoke(args=["identity", "list"]).output
    assert "ECHO1" in output
    assert "never connected" in output


def test_user_create_with_password_stdin(runner, client):
    result = runner.invoke(args=["user", "create", "nurse.kim", "--role", "Support", "--password-stdin"],
                           input="a-long-enough-password\n")
    assert result.exit_code == 0, result.output
    assert login(client, "nurse.kim", "a-long-enough-password").status_code == 302


@pytest.mark.parametrize(
    ("arguments", "password", "message"),
    [
        (["bob", "--role", "Janitor"], "a-long-enough-password", "role 'Janitor' not found"),
        (["bad name", "--role", "Support"], "a-long-enough-password", "invalid username 'bad name'"),
        (["admin", "--role", "Support"], "a-long-enough-password", "a user named 'admin' already exists"),
        (["bob", "--role", "Support"], "short", "the password is too short"),
        (["bob"], "a-long-enough-password", "Missing option '--role'"),
    ],
)
def test_user_create_invalid(runner, arguments, password, message):
    result = runner.invoke(args=["user", "create", *arguments, "--password-stdin"], input=password + "\n")
    assert result.exit_code != 0
    assert message in result.output


def test_identity_allow_from(runner):
    result = runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1",
                                 "--allow-from", "10.1.4.23, 10.1.4.0/24,fd00::/64"])
    assert result.exit_code == 0, result.output
    assert identities(runner)[0]["allowed_networks"] == ["10.1.4.23/32", "10.1.4.0/24", "fd00::/64"]

    assert runner.invoke(args=["identity", "update", "ECHO1", "--allow-from", ""]).exit_code == 0
    assert identities(runner)[0]["allowed_networks"] == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.1.4.5/24", "--allow-from: '10.1.4.5/24' has host bits set: the range is 10.1.4.0/24"),
        ("10.1.4", "--allow-from: '10.1.4' is not an IP address or range"),
        ("10.1.4.23,10.1.4.23/32", "repeats '10.1.4.23'"),
    ],
)
def test_identity_allow_from_invalid(runner, value, message):
    result = runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1", "--allow-from", value])
    assert result.exit_code != 0
    assert message in result.output
    assert identities(runner) == []


def test_user_set_password(runner, client):
    result = runner.invoke(args=["user", "set-password", "support", "--password-stdin"],
                           input="a-new-long-password\n")
    assert result.exit_code == 0, result.output
    assert login(client, "support", "a-new-long-password").status_code == 302


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [("nobody", "a-new-long-password", "user 'nobody' not found"),
     ("support", "short", "the password is too short")],
)
def test_user_set_password_invalid(runner, client, name, password, message):
    result = runner.invoke(args=["user", "set-password", name, "--password-stdin"], input=password + "\n")
    assert result.exit_code != 0
    assert message in result.output


@pytest.mark.parametrize("arguments", [
    ["identity", "list"],
    ["identity", "create", "--name", "Echo cart", "--ae-title", "ECHO9"],
    ["identity", "certificate", "remove", "ECHO9"],
    ["user", "create", "nurse", "--role", "Support"],
    ["token", "create", "admin"],
])
def test_command_on_empty_database_names_upgrade(tmp_path, arguments):
    environ = {**os.environ, "DATA_DIR": str(tmp_path / "data")}

    result = subprocess.run([PORTAL, *arguments], env=environ, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "is at an empty database, not at the latest revision" in result.stderr
    assert "run `portal db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_help_on_empty_database(tmp_path):
    environ = {**os.environ, "DATA_DIR": str(tmp_path / "data")}

    result = subprocess.run([PORTAL, "identity", "create", "--help"], env=environ, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 0
    assert "Create a DICOM identity." in result.stdout
    # Both required options are marked as required.
    assert re.search(r"--ae-title TEXT\s+AE title[^\[]*\[required\]", result.stdout)
    assert re.search(r"--name TEXT\s+Display name[^\[]*\[required\]", result.stdout)
