"""Settings: TOML file < COMITY_* environment < keyword overrides; paths under data_dir; loopback-only plain HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import Settings, is_loopback_host, load_settings, settings_toml


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("COMITY_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "comity.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = 'authority_id = "ar.mj"\ndata_dir = "{data}"\n'


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, BASE.format(data=tmp_path / "data")))
    assert settings.authority_id == "ar.mj"
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8080)
    assert (settings.federation_host, settings.federation_port) == ("127.0.0.1", 8443)
    assert settings.max_envelope_bytes == 4 * 1024 * 1024
    assert settings.max_attachment_bytes == 8 * 1024**3
    assert settings.dev_plain_http is False
    assert settings.log_level == "info"
    assert settings.database_dsn == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'comity.db'}"


def test_precedence_file_then_environment_then_keywords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, BASE.format(data=tmp_path) + "api_port = 9000\nfederation_port = 9443\n")
    assert load_settings(config).api_port == 9000
    monkeypatch.setenv("COMITY_API_PORT", "9100")
    monkeypatch.setenv("COMITY_LOG_LEVEL", "debug")
    settings = load_settings(config)
    assert (settings.api_port, settings.federation_port, settings.log_level) == (9100, 9443, "debug")
    assert load_settings(config, api_port=9200).api_port == 9200


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, BASE.format(data=tmp_path) + "db_pool_size = 7\n")
    monkeypatch.setenv("COMITY_CONFIG", str(config))
    monkeypatch.setenv("COMITY_PASSPHRASE", "not a setting, and not an error either")
    assert load_settings().db_pool_size == 7


def test_without_a_file_environment_and_keywords_suffice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMITY_AUTHORITY_ID", "es.mj")
    settings = load_settings(data_dir=tmp_path, database_url="postgresql+asyncpg://db/comity")
    assert settings.authority_id == "es.mj"
    assert settings.database_dsn == "postgresql+asyncpg://db/comity"


def test_relative_paths_resolve_against_data_dir(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE.format(data=tmp_path / "d") + 'directory_file = "/etc/comity/dir.jws"\n')
    settings = load_settings(config)
    assert settings.keys_path == tmp_path / "d" / "keys.sealed"
    assert settings.tls_cert_path == tmp_path / "d" / "tls" / "cert.pem"
    assert settings.tls_key_path == tmp_path / "d" / "tls" / "key.pem"
    assert settings.directory_key_path == tmp_path / "d" / "directory-key.jwk"
    assert settings.attachments_path == settings.path("attachments_dir") == tmp_path / "d" / "attachments"
    assert settings.directory_path == Path("/etc/comity/dir.jws")
    with pytest.raises(KeyError, match="not a file setting"):
        settings.path("api_host")


def test_relative_data_dir_resolves_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(authority_id="ar.mj", data_dir="data").data_dir == tmp_path / "data"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "gateway.example.org"])  # noqa: S104
def test_dev_plain_http_refused_on_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"dev_plain_http is only allowed on loopback hosts, not {host}")):
        load_settings(authority_id="ar.mj", data_dir=tmp_path, dev_plain_http=True, federation_host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_dev_plain_http_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    settings = load_settings(authority_id="ar.mj", data_dir=tmp_path, dev_plain_http=True, api_host=host)
    assert settings.dev_plain_http


def test_loopback_hosts() -> None:
    assert is_loopback_host("[::1]")
    assert not is_loopback_host("localhost.example.org")
    assert not is_loopback_host("10.0.0.1")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('authority_id = "AR-MJ"\n', "authority_id: authority id must look like 'ar.mj'"),
        ("api_port = 70000\n", "api_port: Input should be less than or equal to 65535"),
        ('log_level = "loud"\n', "log_level: Input should be"),
        ("outbox_max_backoff = 0.1\n", "outbox_max_backoff must be at least outbox_initial_backoff"),
        ("api_prot = 8080\n", "api_prot: Extra inputs are not permitted"),
        ("api_port = \n", "cannot be read"),
    ],
)
def test_invalid_files_raise_config_error_naming_the_setting(tmp_path: Path, extra: str, message: str) -> None:
    text = BASE.format(data=tmp_path)
    if extra.startswith("authority_id"):
        text = text.replace('authority_id = "ar.mj"\n', "")
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path, text + extra))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; run 'comity init'"):
        load_settings(tmp_path / "nope.toml")


def test_missing_required_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="authority_id: Field required"):
        load_settings(write_config(tmp_path, f'data_dir = "{tmp_path}"\n'))


def test_bad_environment_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMITY_FEDERATION_PORT", "eighty")
    with pytest.raises(ConfigError, match="federation_port"):
        load_settings(authority_id="ar.mj", data_dir=tmp_path)


def test_written_toml_loads_back(tmp_path: Path) -> None:
    values = {
        "authority_id": "ar.mj",
        "data_dir": tmp_path / 'quote " and \\ backslash ñ',
        "federation_port": 9443,
        "dev_plain_http": False,
        "outbox_initial_backoff": 0.25,
        "database_url": None,
    }
    text = settings_toml(values, header="written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    settings = load_settings(write_config(tmp_path, text))
    assert settings.data_dir == values["data_dir"]
    assert (settings.federation_port, settings.outbox_initial_backoff, settings.database_url) == (9443, 0.25, None)
    with pytest.raises(ValueError, match="not settings"):
        settings_toml({"passphrase": "x"})


def test_settings_without_a_file_do_not_read_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "comity.toml").write_text('authority_id = "zz.bad"\n')
    assert Settings(authority_id="ar.mj", data_dir=tmp_path).authority_id == "ar.mj"


def test_sample_configuration_loads(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[2] / "config" / "samples" / "comity.toml"
    settings = load_settings(sample, data_dir=tmp_path)
    assert settings == load_settings(sample, data_dir=tmp_path)
    assert settings.authority_id == "ar.mj"
    # every comity.toml points to the sample for "every setting and its default": it names each one
    text = sample.read_text(encoding="utf-8")
    named = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    assert set(Settings.model_fields) - named == set()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("COMITY_MAX_ENVELOPE_BYTE", "10", "COMITY_MAX_ENVELOPE_BYTE: no such setting"),  # misspelt: was ignored
        ("COMITY_OUTBOX_MAX_BACKOFF", "inf", "outbox_max_backoff"),  # a retry never due again
        ("COMITY_OUTBOX_INITIAL_BACKOFF", "1e308", "outbox_initial_backoff"),
        # added to and subtracted from now: beyond datetime's range, every receipt and rotation raised OverflowError
        ("COMITY_MAX_MESSAGE_AGE_SECONDS", str(10**12), "max_message_age_seconds: Input should be less than or equal"),
        (
            "COMITY_MAX_MESSAGE_AGE_SECONDS",
            str(315360001),
            "max_message_age_seconds: Input should be less than or equal",
        ),
        # a receiver allowing more receipts what every sender and auditor refuses (decision 157)
        ("COMITY_MAX_CLOCK_SKEW_SECONDS", "301", "max_clock_skew_seconds: Input should be less than or equal to 300"),
        ("COMITY_NOTIFY_WEBHOOK_SECRET", "", "notify_webhook_secret: must be at least 16"),
        ("COMITY_NOTIFY_WEBHOOK_SECRET", "short", "notify_webhook_secret"),
        # the notifier POSTed to these at every interval and failed each time, without a word at start
        ("COMITY_NOTIFY_WEBHOOK_URL", "http://", "notify_webhook_url: must be an http:// or https:// URL with a host"),
        ("COMITY_NOTIFY_WEBHOOK_URL", "https://:443/x", "notify_webhook_url: must be an http:// or https:// URL"),
        ("COMITY_NOTIFY_WEBHOOK_URL", "https://alerts:99999/", "notify_webhook_url: must be an http:// or https://"),
        ("COMITY_NOTIFY_WEBHOOK_URL", "ftp://alerts/", "notify_webhook_url: must be an http:// or https:// URL"),
        ("COMITY_NOTIFY_WEBHOOK_URL", "https://alerts/\tx", "notify_webhook_url: must be an http:// or https://"),
        ("COMITY_DATA_DIR", "", "data_dir: must name a path"),  # was the current directory
        ("COMITY_KEYS_FILE", " ", "keys_file: must name a path"),  # was data_dir itself
        ("COMITY_TIME_ZONE", "Mars/Olympus_Mons", "time_zone: must be an IANA time zone name"),
        ("COMITY_TIME_ZONE", "../../etc/passwd", "time_zone: must be an IANA time zone name"),
        ("COMITY_TIME_ZONE", "", "time_zone: must be an IANA time zone name"),
        ("COMITY_TIME_ZONE", "America", "time_zone: must be an IANA time zone name"),  # a directory of the database
        ("COMITY_TIME_ZONE", "localtime", "time_zone: must be an IANA time zone name"),
        ("COMITY_TIME_ZONE", "A" * 300, "time_zone: must be an IANA time zone name"),
        ("COMITY_TIME_ZONE", "right/Europe/Madrid", "time_zone: must be an IANA time zone name"),  # leap seconds
        ("COMITY_TIME_ZONE", "posixrules", "time_zone: must be an IANA time zone name"),
    ],
)
def test_environment_values_are_held_to_what_the_file_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write_config(tmp_path, BASE.format(data=tmp_path)))


def test_the_time_zone_is_the_authoritys_calendar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(write_config(tmp_path, BASE.format(data=tmp_path))).time_zone == "UTC"
    monkeypatch.setenv("COMITY_TIME_ZONE", "Australia/Sydney")
    settings = load_settings(write_config(tmp_path, BASE.format(data=tmp_path)))
    assert str(settings.zone) == "Australia/Sydney"


def test_variables_that_are_not_settings_are_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMITY_PASSPHRASE", "COMITY_DEBUG", "COMITY_AUDIT_TOKEN"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("COMITY_NOTIFY_WEBHOOK_SECRET", "s" * 16)
    assert load_settings(write_config(tmp_path, BASE.format(data=tmp_path))).notify_webhook_secret is not None
