"""Helpers shared by the ``comity`` commands: passphrases, one-line errors, files that must not be clobbered."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, ParamSpec, TypeVar

import click

from crypto.keys import KdfParams
from gateway.files import sync_directory
from protocol.errors import ComityError
from store.errors import outage_name

__all__ = [
    "FAST_KDF",
    "MIN_NEW_PASSPHRASE",
    "CommandError",
    "CommandLineError",
    "ensure_private_dir",
    "one_line",
    "read_passphrase",
    "replace_file",
    "reports_errors",
    "write_new_file",
]

# Cheap argon2id parameters behind the hidden --kdf-fast flag: for tests and the benchmark only, never for real keys.
FAST_KDF: Final = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)

# A passphrase that seals new keys (init, directory keygen): as long as a user's password at least (store/logins.py).
MIN_NEW_PASSPHRASE: Final = 12

_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_line(text: str) -> str:
    return " ".join(text.split())


class CommandError(click.ClickException):
    """A failure the operator can act on: printed as one line ``comity: <message>`` on stderr, exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"comity: {self.format_message()}", err=True, file=file)


class CommandLineError(CommandError):
    """A command line that could not be parsed (click's usage errors), as one line; exit code 2."""

    exit_code = 2


def reports_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn Comity errors, an unreachable database and file system errors raised by ``command`` into
    :class:`CommandError` (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except ComityError as exc:
            raise CommandError(exc.message) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CommandError(f"{where}{exc.strerror or exc}") from None
        except Exception as exc:
            if missing_schema(exc):
                raise CommandError("the database has no Comity schema yet; run 'comity db upgrade'") from None
            if (outage := outage_name(exc)) is None:
                raise
            raise CommandError(f"the database is unavailable ({outage}); is it running?") from None

    return wrapper


def missing_schema(exc: BaseException) -> bool:
    """Whether a database error says a table does not exist: a database never migrated (``comity db upgrade``)."""
    cause = getattr(exc, "orig", None) or exc
    # SQLite says so in words; PostgreSQL by SQLSTATE 42P01, undefined_table
    return "no such table" in str(cause) or getattr(cause, "sqlstate", None) == "42P01"


def utf8(value: str, source: str) -> bytes:
    """``value`` as UTF-8, or a one-line error naming ``source`` and nothing of the value (a secret, maybe)."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise CommandError(f"{source} is not valid UTF-8") from None


def _secret_file(file_var: str) -> str | None:
    """The contents of the file named by ``file_var`` (a container secret), without its trailing newlines as
    docker/entrypoint.sh reads it; ``None`` when the variable is unset. Errors name the variable and the file, never
    what the file holds."""
    name = os.environ.get(file_var)
    if not name:  # unset, or set empty: as docker/entrypoint.sh reads it
        return None
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise CommandError(
            f"{file_var} names {name}, which cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        return data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise CommandError(f"{file_var} ({name}) is not valid UTF-8") from None


def read_passphrase(env_var: str, *, confirm: bool, what: str = "passphrase", new: bool = False) -> bytes:
    """The passphrase from ``env_var`` if set, else from the file named by ``<env_var>_FILE`` if that is set (not
    both), else a hidden prompt (typed twice when ``confirm``). A ``new`` one, about to seal keys, must have at least
    :data:`MIN_NEW_PASSPHRASE` characters."""
    file_var = f"{env_var}_FILE"
    value = os.environ.get(env_var)
    if value is not None and os.environ.get(file_var):
        raise CommandError(f"both {env_var} and {file_var} are set; set only one")
    source = env_var
    if value is None:
        value, source = _secret_file(file_var), file_var
    if value is None:
        try:
            value = click.prompt(f"{what.capitalize()}", hide_input=True, confirmation_prompt=confirm, err=True)
        except click.Abort:  # end of input (nothing piped, a closed stdin) or ^C: one line, as every failure
            raise CommandError(f"no {what} was given; set {env_var} or type one at the prompt") from None
    if not value:
        raise CommandError(f"the {what} must not be empty; set {env_var} or type one at the prompt")
    encoded = utf8(value, source if source in os.environ else f"the {what} typed")
    if new and len(value) < MIN_NEW_PASSPHRASE:
        raise CommandError(f"the {what} must have at least {MIN_NEW_PASSPHRASE} characters, as a user's password")
    return encoded


def ensure_private_dir(path: Path, *, tighten: bool = False) -> None:
    """Create ``path`` (and parents) readable by the owner only; with ``tighten``, an existing one is made so too
    (the data directory: it holds keys, the SQLite database and the attachments; never a directory the settings
    merely point into, which may be shared)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if tighten and path.stat().st_mode & 0o077:
        path.chmod(0o700)


def write_new_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write a file that must not exist yet; ``private`` files (key material) get mode 0600, others 0644. A write
    that fails leaves no file behind."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_and_close(fd, data, mode)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_new_files(files: list[tuple[Path, bytes, bool]]) -> None:
    """:func:`write_new_file` for each ``(path, data, private)``, all or none: a failure removes those written."""
    written: list[Path] = []
    try:
        for path, data, private in files:
            write_new_file(path, data, private=private)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write_and_close(fd: int, data: bytes, mode: int) -> None:
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new contents, never a mix); ``private`` as for
    :func:`write_new_file`. The temporary file has a name of its own, so two writers never share one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        _write_and_close(fd, data, 0o600 if private else 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)  # the rename itself survives a power loss, in the order of the calls
