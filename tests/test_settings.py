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
        ("PORTAL_TRUSTED_PROXIES", "-1", "PORTAL_TRUSTED_PROXIES='-1' is invalid"),
        ("DICOM_PUBLIC_HOST", "pacs host", "DICOM_PUBLIC_HOST='pacs host' is invalid"),
        ("DATABASE_URL", "not a url", "DATABASE_URL is not a database URL"),
        ("DATABASE_URL", "mysql://pacs@db/pacs", "DATABASE_URL names the database 'mysql'"),
        ("PORTAL_RATELIMIT_STORAGE_URI", "localhost:6379", "PORTAL_RATELIMIT_STORAGE_URI='localhost:6379' is invalid"),
        ("PORTAL_RATELIMIT_STORAGE_URI", "ftp://cache", "is invalid: use memory://"),
        ("PORTAL_TRUSTED_PROXIES", "one", "is invalid: use a whole number"),
        ("PORTAL_SESSION_IDLE_MINUTES", "0", "PORTAL_SESSION_IDLE_MINUTES='0' is invalid"),
        ("DICOMD_NODE_NAME", "x" * 256, "DICOMD_NODE_NAME="),
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


def test_dicomd_reliability_defaults():
    settings = Settings.from_env({})
    assert settings.dicom_acse_timeout == 30.0
    assert settings.dicom_dimse_timeout == 30.0
    assert settings.dicom_network_timeout == 60.0
    assert settings.dicomd_stop_grace_seconds == 10.0
    assert settings.dicomd_max_associations == 100
    assert settings.dicomd_max_associations_per_identity == 20


@pytest.mark.parametrize(
    ("name", "raw", "attribute", "expected"),
    [
        ("DICOM_ACSE_TIMEOUT", "5", "dicom_acse_timeout", 5.0),
        ("DICOM_DIMSE_TIMEOUT", "120", "dicom_dimse_timeout", 120.0),
        ("DICOM_NETWORK_TIMEOUT", "0.5", "dicom_network_timeout", 0.5),
        ("DICOMD_STOP_GRACE_SECONDS", "0", "dicomd_stop_grace_seconds", 0.0),
        ("DICOMD_STOP_GRACE_SECONDS", "3600", "dicomd_stop_grace_seconds", 3600.0),
        ("DICOMD_MAX_ASSOCIATIONS", "3", "dicomd_max_associations", 3),
        ("DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY", "1", "dicomd_max_associations_per_identity", 1),
    ],
)
def test_dicomd_reliability_setting_accepted(name, raw, attribute, expected):
    assert getattr(Settings.from_env({name: raw}), attribute) == expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("DICOM_ACSE_TIMEOUT", "0", "use more than 0"),
        ("DICOM_DIMSE_TIMEOUT", "-1", "out of range"),
        ("DICOM_NETWORK_TIMEOUT", "3601", "at most 3600 seconds"),
        ("DICOM_NETWORK_TIMEOUT", "soon", "not a number of seconds"),
        ("DICOMD_STOP_GRACE_SECONDS", "-1", "use 0 or more"),
        ("DICOMD_STOP_GRACE_SECONDS", "7200", "at most 3600 seconds"),
        ("DICOMD_MAX_ASSOCIATIONS", "0", "use 1 or more"),
        ("DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY", "many", "not a whole number"),
    ],
)
def test_dicomd_reliability_setting_rejected(name, raw, message):
    with pytest.raises(SettingsError, match=f"{name}=.*{message}"):
        Settings.from_env({name: raw})
