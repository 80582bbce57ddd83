"""Gateway settings: a TOML file, overridden by ``COMITY_*`` environment variables, overridden by keyword arguments.

The settings file is flat: each top-level key is a field name (see ``config/samples/comity.toml`` and
``docs/configuration.md``). Each field ``name`` can also be set with the environment variable ``COMITY_NAME``.
Relative file names resolve against ``data_dir``. The passphrase that opens the private keys is never a setting:
it comes from ``COMITY_PASSPHRASE`` or an interactive prompt (see ``gateway/cli/common.py``).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, available_timezones

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.errors import ConfigError
from protocol.errors import InvalidMessage
from protocol.messages import validate_authority_id
from protocol.receipts import MAX_CLOCK_SKEW

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PASSPHRASE_ENV",
    "Settings",
    "is_loopback_host",
    "load_settings",
    "settings_toml",
]

ENV_PREFIX: Final = "COMITY_"
CONFIG_ENV: Final = "COMITY_CONFIG"
# COMITY_* variables the commands read that are not settings (the settings file, secrets, switches, tests)
NOT_SETTINGS_ENV: Final = frozenset(
    {
        CONFIG_ENV,
        "COMITY_PASSPHRASE",
        "COMITY_PASSPHRASE_FILE",
        "COMITY_DIRECTORY_PASSPHRASE",
        "COMITY_DIRECTORY_PASSPHRASE_FILE",
        "COMITY_USER_PASSWORD",
        "COMITY_OPERATOR",
        "COMITY_AUDIT_TOKEN",
        "COMITY_DEBUG",
        "COMITY_TEST_PG",
        "COMITY_BENCH_PG",
    }
)
MIN_WEBHOOK_SECRET: Final = 16
MAX_MESSAGE_AGE_SECONDS: Final = 10 * 365 * 86400  # ten years: far beyond any retry, far inside datetime's range
PASSPHRASE_ENV: Final = "COMITY_PASSPHRASE"  # noqa: S105 (a variable name) read by the CLI only; never a field

# The TOML file of the load in progress; None means "no file" (plain ``Settings(...)``: keywords and environment).
_toml_file: ContextVar[Path | None] = ContextVar("comity_settings_toml_file", default=None)

# Fields naming a file or directory under data_dir.
_PATH_FIELDS: Final = (
    "keys_file",
    "tls_cert_file",
    "tls_key_file",
    "directory_file",
    "directory_key_file",
    "attachments_dir",
)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())  # a walk of the zone database: once per process


class Settings(BaseSettings):
    """Everything a gateway reads at start-up. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    authority_id: str
    data_dir: Path
    database_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    # reverse proxies in front of the local API whose X-Forwarded-For is believed (addresses or networks)
    api_trusted_proxies: tuple[str, ...] = ()
    federation_host: str = "127.0.0.1"
    federation_port: int = Field(default=8443, ge=1, le=65535)
    keys_file: Path = Path("keys.sealed")
    tls_cert_file: Path = Path("tls/cert.pem")
    tls_key_file: Path = Path("tls/key.pem")
    directory_file: Path = Path("directory.jws")
    directory_key_file: Path = Path("directory-key.jwk")
    attachments_dir: Path = Path("attachments")
    dev_plain_http: bool = False
    # at most MAX_CLOCK_SKEW: a receiver allowing more would receipt what every sender and auditor refuses
    max_clock_skew_seconds: int = Field(default=300, ge=0, le=int(MAX_CLOCK_SKEW.total_seconds()))
    # at most MAX_MESSAGE_AGE_SECONDS: the gateway adds it to now and subtracts it from now (datetime's range)
    max_message_age_seconds: int = Field(default=30 * 86400, ge=60, le=MAX_MESSAGE_AGE_SECONDS)
    max_envelope_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(default=8 * 1024**3, ge=0)
    outbox_initial_backoff: float = Field(default=0.5, gt=0, le=86400)
    outbox_max_backoff: float = Field(default=300.0, gt=0, le=86400)
    outbox_connections_per_peer: int = Field(default=128, ge=1, le=1024)
    # API requests of one user (all her tokens): a bucket of this many, refilled at this rate per minute; beyond,
    # 429 rate-limited; a rate of 0 sets no limit (gateway/api.py, decision 177)
    api_request_burst: int = Field(default=600, ge=1, le=1_000_000)
    api_requests_per_minute: float = Field(default=6000.0, ge=0, le=10_000_000)
    # refusals of one peer we ledger: a bucket of this many, refilled at this rate; beyond, 429 (gateway/limits.py)
    peer_refusal_burst: int = Field(default=300, ge=1, le=1_000_000)
    peer_refusals_per_minute: float = Field(default=60.0, gt=0, le=1_000_000)
    # deliveries of one peer read and checked at once, each holding up to max_envelope_bytes (gateway/limits.py)
    peer_deliveries_at_once: int = Field(default=32, ge=1, le=1024)
    # an envelope must arrive within this many seconds, an attachment may pause no longer, and the attachments must
    # arrive within this plus their size at 64 KiB/s (gateway/federation.py, gateway/receiving.py)
    body_read_seconds: float = Field(default=60.0, gt=0, le=3600)
    # how often the witness fetches the checkpoint of a peer no receipt brought one of meanwhile (gateway/witness.py)
    witness_poll_seconds: float = Field(default=300.0, ge=1, le=86400)
    db_pool_size: int = Field(default=40, ge=1, le=1000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    status_reveal: Literal["state_and_date", "date_only", "nothing"] = "state_and_date"  # art. 46(24) answers
    # statistics read by someone who may not open content (auditors): counts under this are withheld, and the
    # periods are years or months (docs/requests.md "Statistics", decision 114); 1 shows every count
    stats_min_cell: int = Field(default=5, ge=1, le=1000)
    # case work (docs/requests.md, "Case work"): the written confirmation of an oral urgent request is due this many
    # days after it (art. 46(14) says "forthwith"); items are notified this many days ahead, then once overdue
    confirm_in_writing_days: int = Field(default=3, ge=0, le=30)
    notify_days_ahead: int = Field(default=3, ge=0, le=60)
    notify: Literal["none", "log", "webhook"] = "log"
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr | None = None  # HMAC-SHA256 key for the Comity-Signature header
    notify_interval_seconds: float = Field(default=60.0, ge=0.05, le=86400)
    # the authority's own calendar: what "today" is for case dates and tasks (overdue, upcoming, notifications) and
    # for a request's suggested deadline in statistics; an IANA name such as Australia/Sydney (decision 119)
    time_zone: str = "UTC"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: keyword overrides, then COMITY_* variables, then the TOML file. No .env, no secrets dir.
        toml_file = _toml_file.get()
        if toml_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @field_validator("authority_id")
    @classmethod
    def _authority_id(cls, value: str) -> str:
        try:
            return validate_authority_id(value)
        except InvalidMessage as exc:
            raise ValueError(exc.message) from None

    @field_validator("data_dir", *_PATH_FIELDS, mode="before")
    @classmethod
    def _named(cls, value: object) -> object:
        # an empty value would become "." (the current directory, or data_dir itself): a mistake, never a choice
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a path, not be empty")
        return value

    @field_validator("notify_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_WEBHOOK_SECRET:  # an empty key: anyone's HMAC
            raise ValueError(f"must be at least {MIN_WEBHOOK_SECRET} characters (or unset, for unsigned calls)")
        return value

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        # the notifier POSTs to it as it is: a URL without a host ("http://") or with a bad port failed at every call
        if value is None:
            return None
        problem = "must be an http:// or https:// URL with a host, like https://alerts.internal/comity"
        if not value.startswith(("https://", "http://")) or any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError(problem)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise ValueError(problem) from None
        if not parts.hostname:
            raise ValueError(problem)
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        # a name of the IANA list, not any file ZoneInfo opens: "America" is a directory, "right/..." counts leap
        # seconds (an hour off in places), "posixrules" and "localtime" depend on the host
        if value == "localtime" or value not in _zone_names():
            raise ValueError("must be an IANA time zone name such as Europe/Madrid or UTC")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)  # cached by zoneinfo itself

    def today(self, now: datetime) -> date:
        """The date at ``now`` in the authority's own calendar (decision 119)."""
        return now.astimezone(self.zone).date()

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # A relative data_dir resolves against the current directory once, at load time.
        return value.expanduser().absolute()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.ip_network(item.strip(), strict=False)) for item in value)
        except ValueError:
            raise ValueError("must be a list of IP addresses or networks (10.0.0.5, 10.0.0.0/24, ::1)") from None

    @field_validator("api_host", "federation_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value) or "/" in value:
            raise ValueError("must be a host name or IP address")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.outbox_max_backoff < self.outbox_initial_backoff:
            raise ValueError("outbox_max_backoff must be at least outbox_initial_backoff")
        if self.notify == "webhook" and self.notify_webhook_url is None:
            raise ValueError("notify = 'webhook' needs notify_webhook_url, an http:// or https:// URL")
        if self.dev_plain_http:
            exposed = [h for h in (self.api_host, self.federation_host) if not is_loopback_host(h)]
            if exposed:
                raise ValueError(
                    f"dev_plain_http is only allowed on loopback hosts, not {', '.join(exposed)}; "
                    "use TLS or bind to 127.0.0.1"
                )
        return self

    # --- derived values ---------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The absolute path of the file setting ``name`` (e.g. ``"keys_file"``), resolved against ``data_dir``."""
        if name not in _PATH_FIELDS:
            raise KeyError(f"{name!r} is not a file setting; one of {', '.join(_PATH_FIELDS)}")
        value: Path = getattr(self, name)
        return value if value.is_absolute() else self.data_dir / value

    @property
    def database_dsn(self) -> str:
        """``database_url``, or a SQLite file ``comity.db`` in ``data_dir`` when it is not set."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'comity.db'}"

    @property
    def keys_path(self) -> Path:
        return self.path("keys_file")

    @property
    def tls_cert_path(self) -> Path:
        return self.path("tls_cert_file")

    @property
    def tls_key_path(self) -> Path:
        return self.path("tls_key_file")

    @property
    def directory_path(self) -> Path:
        return self.path("directory_file")

    @property
    def directory_key_path(self) -> Path:
        return self.path("directory_key_file")

    @property
    def attachments_path(self) -> Path:
        return self.path("attachments_dir")


@contextmanager
def _reading(toml_file: Path | None) -> Iterator[None]:
    token = _toml_file.set(toml_file)
    try:
        yield
    finally:
        _toml_file.reset(token)


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (or the file named by ``COMITY_CONFIG``; or none), the environment and
    ``overrides``, in increasing order of precedence. Raises :class:`ConfigError` naming the first bad setting."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    unknown = sorted(
        name
        for name in os.environ
        if name.startswith(ENV_PREFIX)
        and name not in NOT_SETTINGS_ENV
        and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown:  # a misspelt variable would be ignored, silently: the TOML file refuses unknown keys too
        raise ConfigError(
            f"{', '.join(unknown)}: no such setting (docs/configuration.md lists them; {ENV_PREFIX}* variables that "
            "are not settings: " + ", ".join(sorted(NOT_SETTINGS_ENV)) + ")"
        )
    source = "settings"
    if config_file is not None:
        config_file = config_file.expanduser()
        source = str(config_file)
        if not config_file.is_file():
            raise ConfigError(f"settings file {config_file} does not exist; run 'comity init' or set {CONFIG_ENV}")
    try:
        with _reading(config_file):
            return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    except ValueError as exc:  # TOML syntax errors (tomllib.TOMLDecodeError) and environment values that are not JSON
        raise ConfigError(f"{source}: cannot be read ({exc}); fix the file or the {ENV_PREFIX}* variables") from None


# --- a tiny TOML writer for `comity init` ---------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # A JSON string with ASCII escapes is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"cannot write {type(value).__name__} as a TOML setting")


def settings_toml(values: Mapping[str, object], *, header: str = "") -> str:
    """A flat TOML document for ``values`` (field name -> str, Path, int, float or bool; None values are skipped)."""
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"not settings: {unknown}")
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{name} = {_toml_value(value)}" for name, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"
