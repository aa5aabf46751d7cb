import pytest

from portal.settings import Settings, SettingsError


def test_defaults_follow_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.data_dir == tmp_path / "instance"
    assert settings.database_url == f"sqlite:///{tmp_path / 'instance' / 'portal.db'}"
    assert (settings.portal_host, settings.portal_port) == ("127.0.0.1", 8000)
    assert settings.dicom_ae_title == "PACS"
    assert settings.dicom_host == "0.0.0.0"
    assert settings.dicom_port == 11112
    assert settings.dicom_tls_port == 2762
    assert settings.storage_dir == tmp_path / "instance" / "storage"
    assert settings.dicomd_workers >= 1


def test_storage_dir_and_database_url_overrides(tmp_path):
    settings = Settings.from_env({
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "sqlite:////var/lib/pacs/other.db",
        "DICOM_STORAGE_DIR": str(tmp_path / "volume"),
    })
    assert settings.database_url == "sqlite:////var/lib/pacs/other.db"
    assert settings.storage_dir == tmp_path / "volume"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DICOM_PORT", "notaport", "DICOM_PORT='notaport' is not a port number"),
        ("DICOM_PORT", "0", "out of range"),
        ("DICOM_TLS_PORT", "70000", "out of range"),
        ("PORTAL_PORT", "-1", "out of range"),
        ("DICOMD_WORKERS", "0", "DICOMD_WORKERS='0' is invalid"),
        ("DICOMD_WORKERS", "two", "not a whole number"),
        ("DICOM_AE_TITLE", "THIS_IS_TOO_LONG_FOR_AE", "not a valid AE title"),
        ("DICOM_AE_TITLE", "BAD\\AE", "backslash"),
    ],
)
def test_invalid_setting_rejected(tmp_path, name, value, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"DATA_DIR": str(tmp_path), name: value})


def test_secret_key_generated_once(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    first = settings.secret_key()
    assert len(first) == 64
    assert settings.secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_secret_key_from_environment(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "SECRET_KEY": "from-the-vault"})
    assert settings.secret_key() == "from-the-vault"
    assert not (tmp_path / "secret_key").exists()


def test_tls_defaults():
    settings = Settings.from_env({})
    assert settings.dicom_tls_min_version == "1.2"
    assert settings.dicom_tls_handshake_timeout == 10.0


@pytest.mark.parametrize(("raw", "expected"), [("1.2", "1.2"), ("1.3", "1.3"), ("TLSv1.3", "1.3")])
def test_tls_min_version_accepted(raw, expected):
    assert Settings.from_env({"DICOM_TLS_MIN_VERSION": raw}).dicom_tls_min_version == expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DICOM_TLS_MIN_VERSION", "1.1"),
        ("DICOM_TLS_MIN_VERSION", "1.0"),
        ("DICOM_TLS_MIN_VERSION", "ssl3"),
        ("DICOM_TLS_HANDSHAKE_TIMEOUT", "0"),
        ("DICOM_TLS_HANDSHAKE_TIMEOUT", "-5"),
        ("DICOM_TLS_HANDSHAKE_TIMEOUT", "ten"),
        ("DICOM_TLS_HANDSHAKE_TIMEOUT", "301"),
    ],
)
def test_tls_settings_rejected(name, raw):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})


def test_tls_cert_without_key_rejected():
    with pytest.raises(SettingsError, match="DICOM_TLS_KEY"):
        Settings.from_env({"DICOM_TLS_CERT": "/etc/pacs/server.pem"})
