import io

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from portal import create_app
from portal.extensions import db
from portal.identities import transfer
from portal.models import AuditEvent, DicomIdentity
from portal.settings import Settings

HEADER = "name,ae_title,enabled,allow_anonymous_tls,require_tls,permitted,retrieve_host,retrieve_port\n"
EXPORT_HEADER = HEADER.replace("\n", ",allowed_networks\n")


def identities(app) -> dict[str, dict]:
    with app.app_context():
        found = db.session.scalars(select(DicomIdentity)).all()
        return {item.ae_title: item.to_dict() for item in found}


def add(runner, *arguments):
    result = runner.invoke(args=["identity", "create", *arguments])
    assert result.exit_code == 0, result.output


@pytest.fixture
def existing(runner):
    add(runner, "--name", "Echo Room 1", "--ae-title", "ECHO1")
    add(runner, "--name", "Cath Lab", "--ae-title", "CATH1", "--permit", "echo,store,find")


MIXED = HEADER + (
    "Echo Room 2,ECHO2,true,false,false,echo;store,,\n"        # line 2: create
    "Cath Lab,CATH1,false,false,true,echo;store;find,,\n"     # line 3: update
    "Echo Room 1,ECHO1,true,false,false,echo;store,,\n"       # line 4: unchanged
    "Echo Room 2 again,ECHO2,true,false,false,echo,,\n"       # line 5: duplicate of line 2
    "Bad,BAD\\AE,true,false,false,echo,,\n"                    # line 6: invalid AE title
    "Shouty,echo1,true,false,false,echo,,\n"                  # line 7: differs only by case from ECHO1
)


def write(tmp_path, text: str, name: str = "identities.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# Planning


def test_plan_explains_each_row(app, existing):
    with app.app_context():
        plan = transfer.plan_import(db.session, MIXED)
        db.session.rollback()
    actions = [(row.line, row.action) for row in plan.rows]
    assert actions == [(2, "create"), (3, "update"), (4, "unchanged"), (5, "reject"), (6, "reject"),
                       (7, "reject")]
    assert plan.rows[1].details == {"enabled": "true → false", "require_tls": "false → true"}
    assert "already appears on line 2" in plan.rows[3].details["ae_title"]
    assert "backslash" in plan.rows[4].details["ae_title"]
    assert "differs only by case from 'ECHO1'" in plan.rows[5].details["ae_title"]
    assert plan.summary() == "1 to create, 1 to update, 1 unchanged, 3 rejected"


@pytest.mark.parametrize(
    ("cells", "field", "message"),
    [
        ("X,X1,maybe,false,false,echo,,", "enabled", "use true or false"),
        ("X,X1,true,2,false,echo,,", "allow_anonymous_tls", "use true or false"),
        ("X,X1,true,false,,echo,,", "require_tls", "use true or false"),
        ("X,X1,true,false,false,echo;delete,,", "permitted", "unknown operation 'delete'"),
        ("X,X1,true,false,false,echo,host,abc", "retrieve_port", "invalid port 'abc'"),
        ("X,X1,true,false,false,echo,host,70000", "retrieve_port", "invalid port 70000"),
        ("X,X1,true,false,false,echo,host,", "retrieve_port", "needs both a host and a port"),
        ("X,X1,true,false,false,echo,bad host,104", "retrieve_host", "invalid host"),
        (",X1,true,false,false,echo,,", "name", "a name is required"),
        ("X,,true,false,false,echo,,", "ae_title", "at least one character"),
        ("X,SEVENTEEN_CHARS_X,true,false,false,echo,,", "ae_title", "at most 16 characters"),
        ("Echo Room 1,X1,true,false,false,echo,,", "name", "already used"),
        ("X,X1,true,false", "row", "a different number of columns than the header"),
        ("X,X1,true,false,false,echo,,,extra", "row", "a different number of columns than the header"),
    ],
)
def test_plan_rejects_invalid_cell(app, existing, cells, field, message):
    with app.app_context():
        plan = transfer.plan_import(db.session, HEADER + cells + "\n")
        db.session.rollback()
    [row] = plan.rows
    assert row.action == "reject"
    assert message in row.details[field]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("name,ae_title\nX,X1\n", "missing column enabled"),
        (HEADER.strip() + ",colour\n", "unknown column 'colour'"),
    ],
)
def test_plan_rejects_bad_header(app, text, message):
    with app.app_context(), pytest.raises(transfer.ImportFileError, match=message):
        transfer.plan_import(db.session, text)


def test_decode_upload_rejects_binary_and_large():
    with pytest.raises(transfer.ImportFileError, match="not UTF-8"):
        transfer.decode_upload(b"\xff\xfe\x00name")
    with pytest.raises(transfer.ImportFileError, match="the maximum is"):
        transfer.decode_upload(b"x" * (transfer.MAX_IMPORT_BYTES + 1))
    assert transfer.decode_upload("\ufeffname".encode("utf-8")) == "name"


# Command line


def test_cli_import_preview_rejected_writes_nothing(app, runner, existing, tmp_path):
    before = identities(app)
    result = runner.invoke(args=["identity", "import", write(tmp_path, MIXED), "--yes"])
    assert result.exit_code == 1
    assert "reject" in result.output
    assert "already appears on line 2" in result.output
    assert "differs only by case" in result.output
    assert "Nothing imported" in result.output
    assert identities(app) == before


def test_cli_import_valid_rows(app, runner, existing, tmp_path):
    text = HEADER + "Echo Room 2,ECHO2,true,true,false,echo;find,pacs2.local,104\nCath Lab,CATH1,false,false,true,echo,,\n"
    result = runner.invoke(args=["identity", "import", write(tmp_path, text), "--yes"])
    assert result.exit_code == 0, result.output
    assert "Imported: 1 to create, 1 to update, 0 unchanged, 0 rejected." in result.output
    after = identities(app)
    assert after["ECHO2"]["allow_anonymous_tls"] is True
    assert after["ECHO2"]["permitted"] == ["echo", "find"]
    assert (after["ECHO2"]["retrieve_host"], after["ECHO2"]["retrieve_port"]) == ("pacs2.local", 104)
    assert after["CATH1"]["enabled"] is False
    assert after["CATH1"]["permitted"] == ["echo"]
    with app.app_context():
        actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "cli")).all()
    assert actions.count("identity.update") == 1
    assert actions.count("identity.create") == 3


def test_cli_import_asks_before_writing(app, runner, tmp_path):
    path = write(tmp_path, HEADER + "Echo Room 2,ECHO2,true,false,false,echo,,\n")
    declined = runner.invoke(args=["identity", "import", path], input="n\n")
    assert declined.exit_code == 1
    assert "Import 1 to create" in declined.output
    assert identities(app) == {}

    accepted = runner.invoke(args=["identity", "import", path], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert list(identities(app)) == ["ECHO2"]


def test_cli_import_nothing_to_do(runner, existing, tmp_path):
    result = runner.invoke(args=["identity", "import", write(tmp_path, HEADER + "Echo Room 1,ECHO1,true,false,false,echo;store,,\n")])
    assert result.exit_code == 0
    assert "Nothing to import" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["identity", "import", "/nonexistent/identities.csv"], "does not exist"),
        (["identity", "import"], "Missing argument 'PATH'"),
        (["identity", "import", ".", "--yes"], "is a directory"),
        (["identity", "import", "x.csv", "--yes=no"], "does not take a value"),
        (["identity", "export", "/nonexistent/dir/out.csv"], "No such file or directory"),
    ],
)
def test_cli_transfer_option_errors(runner, arguments, message):
    result = runner.invoke(args=arguments)
    assert result.exit_code != 0
    assert message in result.output


def test_cli_import_bad_header(runner, tmp_path):
    result = runner.invoke(args=["identity", "import", write(tmp_path, "name\nX\n"), "--yes"])
    assert result.exit_code == 1
    assert "invalid header" in result.output


def test_cli_import_failure_half_way_writes_nothing(app, runner, existing, tmp_path, monkeypatch):
    before = identities(app)
    original = transfer.update_identity

    def fail_on_cath(session, identity, **changes):
        if identity.ae_title == "CATH1":
            raise OperationalError("UPDATE dicom_identities", {}, Exception("disk I/O error"))
        return original(session, identity, **changes)

    text = HEADER + ("Echo Room 2,ECHO2,true,false,false,echo,,\n"
                     "Echo Room 1,ECHO1,false,false,false,echo,,\n"
                     "Cath Lab,CATH1,false,false,false,echo,,\n")
    monkeypatch.setattr(transfer, "update_identity", fail_on_cath)
    result = runner.invoke(args=["identity", "import", write(tmp_path, text), "--yes"])
    assert result.exit_code == 1
    assert "Nothing imported: the database failed" in result.output
    assert identities(app) == before
    with app.app_context():
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "identity.update")) is None


def test_cli_export_stdout(runner, existing):
    result = runner.invoke(args=["identity", "export"])
    assert result.exit_code == 0
    assert result.stdout == EXPORT_HEADER + ("Cath Lab,CATH1,true,false,false,echo;store;find,,,\n"
                                             "Echo Room 1,ECHO1,true,false,false,echo;store,,,\n")


def test_export_then_import_into_empty_instance(app, runner, tmp_path, databases):
    add(runner, "--name", "Reading room, level 2", "--ae-title", "WS 1", "--allow-anonymous-tls",
        "--require-tls", "--disabled", "--permit", "find,move,get", "--retrieve-host", "10.0.0.7",
        "--retrieve-port", "11113")
    add(runner, "--name", 'Echo "cart" 3', "--ae-title", "ECHO3", "--permit", "echo",
        "--allow-from", "10.1.4.0/24,fd00::/64")
    path = tmp_path / "export.csv"
    assert runner.invoke(args=["identity", "export", str(path)]).exit_code == 0
    exported = identities(app)

    other_dir = tmp_path / "other"
    other_url = databases.provision(other_dir)
    other = create_app(Settings.from_env({"DATA_DIR": str(other_dir), "DATABASE_URL": other_url}), TESTING=True)
    result = other.test_cli_runner().invoke(args=["identity", "import", str(path), "--yes"])
    assert result.exit_code == 0, result.output

    ignored = ("id", "created_at")
    imported = identities(other)
    assert sorted(imported) == sorted(exported)
    for ae_title, original in exported.items():
        copy = imported[ae_title]
        assert {k: v for k, v in copy.items() if k not in ignored} == \
            {k: v for k, v in original.items() if k not in ignored}
    with other.app_context():
        db.engine.dispose()


# Portal


def upload(client, text: str, filename: str = "identities.csv"):
    data = {"file": (io.BytesIO(text.encode("utf-8")), filename)}
    return client.post("/settings/devices/dicom/import", data=data, content_type="multipart/form-data")


def test_portal_upload_page(admin_client):
    page = admin_client.get("/settings/devices/dicom/import").get_data(as_text=True)
    assert "Import DICOM identities" in page
    assert 'enctype="multipart/form-data"' in page


def test_portal_preview_explains_rows_and_writes_nothing(app, admin_client, existing):
    before = identities(app)
    response = upload(admin_client, MIXED)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "1 to create, 1 to update, 1 unchanged, 3 rejected" in page
    assert page.count('class="import-reject"') == 3
    assert "already appears on line 2" in page
    assert "differs only by case from &#39;ECHO1&#39;" in page
    assert "backslash" in page
    assert "Nothing can be imported" in page
    assert "/import/confirm" not in page
    assert identities(app) == before
    with app.app_context():
        assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "identity.update")) is None


def test_portal_confirm_imports_in_one_step(app, admin_client, existing):
    text = HEADER + "Echo Room 2,ECHO2,true,false,false,echo,,\nCath Lab,CATH1,false,false,false,echo,,\n"
    page = upload(admin_client, text).get_data(as_text=True)
    assert "/import/confirm" in page
    assert "ECHO2" not in identities(app)

    response = admin_client.post("/settings/devices/dicom/import/confirm", data={"csv_text": text})
    assert response.status_code == 302
    after = identities(app)
    assert after["ECHO2"]["name"] == "Echo Room 2"
    assert after["CATH1"]["enabled"] is False
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.target == "ECHO2")).all()
    assert [(event.action, event.actor) for event in events] == [("identity.create", "admin")]


def test_portal_confirm_rechecks_rows(app, admin_client, runner):
    text = HEADER + "Echo Room 2,ECHO2,true,false,false,echo,,\n"
    upload(admin_client, text)
    add(runner, "--name", "Somebody else", "--ae-title", "echo2")
    response = admin_client.post("/settings/devices/dicom/import/confirm", data={"csv_text": text})
    assert response.status_code == 409
    assert "differs only by case" in response.get_data(as_text=True)
    assert "ECHO2" not in identities(app)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Choose a CSV file to import."),
        ({"file": (io.BytesIO(b"\xff\xfe\x00"), "x.csv")}, "not UTF-8"),
        ({"file": (io.BytesIO(b"name,colour\n"), "x.csv")}, "invalid header"),
        ({"file": (io.BytesIO(b""), "x.csv")}, "the file is empty"),
    ],
)
def test_portal_upload_errors(admin_client, data, message):
    response = admin_client.post("/settings/devices/dicom/import", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


@pytest.mark.parametrize("data", [{}, {"csv_text": ""}, {"csv_text": "name\n"}])
def test_portal_confirm_errors(app, admin_client, data):
    response = admin_client.post("/settings/devices/dicom/import/confirm", data=data)
    assert response.status_code == 302
    assert response.headers["Location"] == "/settings/devices/dicom/import"
    assert identities(app) == {}


def test_portal_export_download(admin_client, existing):
    response = admin_client.get("/settings/devices/dicom/export.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.get_data(as_text=True).startswith(EXPORT_HEADER + "Cath Lab,CATH1,")


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/settings/devices/dicom/import"),
    ("post", "/settings/devices/dicom/import"),
    ("post", "/settings/devices/dicom/import/confirm"),
    ("get", "/settings/devices/dicom/export.csv"),
])
def test_portal_transfer_needs_integrations_manage(client, method, path):
    from tests.conftest import login
    login(client, "support")
    assert getattr(client, method)(path).status_code == 403


def test_import_allowed_networks_column(app, runner, tmp_path):
    path = tmp_path / "networks.csv"
    path.write_text(EXPORT_HEADER
                    + "Echo,ECHO1,true,false,false,echo;store,,,10.1.4.0/24;10.1.4.23\n"
                    + "Cath,CATH1,true,false,false,echo,,,10.1.4.5/24\n")
    result = runner.invoke(args=["identity", "import", str(path), "--yes"])
    assert result.exit_code != 0
    assert "has host bits set: the range is 10.1.4.0/24" in result.output
    assert identities(app) == {}

    path.write_text(EXPORT_HEADER + "Echo,ECHO1,true,false,false,echo;store,,,10.1.4.0/24;10.1.4.23\n")
    assert runner.invoke(args=["identity", "import", str(path), "--yes"]).exit_code == 0
    assert identities(app)["ECHO1"]["allowed_networks"] == ["10.1.4.0/24", "10.1.4.23/32"]
