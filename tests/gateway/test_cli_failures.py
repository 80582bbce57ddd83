"""The ``comity`` command when things go wrong: one line, nothing of a secret in it, nothing half written, and the
files it creates readable by the operator only (a review of the CLI found each of these otherwise)."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import pytest

from crypto.keys import unseal_keys
from gateway.cli import common
from gateway.context import HEAD_REVISION
from tests.conftest import DatabaseFactory
from tests.gateway.test_cli_init_directory import ENV, fails, init, ok, run

TARGETS = ("keys.sealed", "tls/key.pem", "tls/cert.pem", "comity.toml", "entry.json")


def _init_args(data_dir: Path) -> list[str]:
    return [
        "init", "--id", "ar.mj", "--name", "Ministerio", "--country", "AR", "--endpoint", "https://127.0.0.1:8443",
        "--data-dir", str(data_dir), "--kdf-fast",
    ]  # fmt: skip


def test_an_init_that_fails_part_way_leaves_nothing_and_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = common._write_and_close
    calls = 0

    def disk_full_at_the_third(fd: int, data: bytes, mode: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            os.write(fd, data[:10])  # part of it reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, mode)

    monkeypatch.setattr(common, "_write_and_close", disk_full_at_the_third)
    data_dir = tmp_path / "ar"
    line = fails(*_init_args(data_dir))
    assert "No space left on device" in line
    assert [name for name in TARGETS if (data_dir / name).exists()] == []
    monkeypatch.setattr(common, "_write_and_close", real)
    ok(*_init_args(data_dir))
    assert all((data_dir / name).exists() for name in TARGETS)


def test_keygen_writes_both_files_or_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = common._write_and_close

    def public_fails(fd: int, data: bytes, mode: int) -> None:
        if mode == 0o644:
            raise OSError(errno.EIO, "Input/output error")
        real(fd, data, mode)

    monkeypatch.setattr(common, "_write_and_close", public_fails)
    key = tmp_path / "directory-key.sealed"
    fails("directory", "keygen", "--out", key, "--kdf-fast")
    assert list(tmp_path.iterdir()) == []


async def test_what_init_creates_is_the_operators_alone(databases: DatabaseFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    data_dir.mkdir()
    data_dir.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)  # others can read it
    await asyncio.to_thread(init, data_dir, "ar.mj", "AR", 8443)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "comity.toml").stat().st_mode) == 0o600  # database_url, webhook secret
    if databases.backend == "sqlite":  # SQLite's file, created by the gateway, not by the umask
        previous = os.umask(0o022)
        try:
            await asyncio.to_thread(ok, "db", "upgrade", "--config", data_dir / "comity.toml")
        finally:
            os.umask(previous)
        files = sorted(data_dir.glob("comity.db*"))
        assert files and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files), files


@pytest.mark.parametrize("variable", ["COMITY_PASSPHRASE"])
def test_a_secret_that_is_not_utf8_is_named_not_shown(tmp_path: Path, variable: str) -> None:
    secret = "hunter2\udcff"  # an undecodable byte, as os.environ holds it
    line = fails(*_init_args(tmp_path / "ar"), env={**ENV, variable: secret})
    assert line == f"comity: {variable} is not valid UTF-8"


def test_no_passphrase_at_all_is_one_line(tmp_path: Path) -> None:
    """Neither COMITY_PASSPHRASE nor anything at the prompt (a closed standard input): click's "Aborted!" was
    the whole answer; it is the one line every failure is."""
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    result = run("keys", "list", "--config", data_dir / "comity.toml", env={**ENV, "COMITY_PASSPHRASE": None})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["Passphrase: ", "comity: no passphrase was given; set COMITY_PASSPHRASE or type one at the prompt"]


async def test_a_database_never_migrated_is_named(databases: DatabaseFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    await asyncio.to_thread(init, data_dir, "ar.mj", "AR", 8443)
    config = data_dir / "comity.toml"
    with config.open("a", encoding="utf-8") as handle:
        handle.write(f'database_url = "{await databases.new()}"\n')
    expected = "comity: the database has no Comity schema yet; run 'comity db upgrade'"
    assert (
        await asyncio.to_thread(fails, "user", "create", "alice", "--role", "officer", "--config", config) == expected
    )
    assert await asyncio.to_thread(fails, "user", "list", "--config", config) == expected


def test_an_unexpected_error_is_one_line_without_its_details(tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    config = data_dir / "comity.toml"
    with config.open("a", encoding="utf-8") as handle:  # a port that is no number, beside a password
        handle.write('database_url = "postgresql+asyncpg://comity:s3cret-pw@127.0.0.1:notaport/comity"\n')
    line = fails("user", "list", "--config", config)
    assert line.startswith("comity: unexpected error (") and "COMITY_DEBUG=1" in line
    assert "s3cret-pw" not in line and "notaport" not in line
    line = fails("init", "--id", "au.ag", "--name", "AG", "--country", "AU", "--endpoint", "https://[::1",
                 "--data-dir", tmp_path / "au", "--kdf-fast")  # fmt: skip
    assert "is not a valid URL" in line
    line = fails(
        "audit", "verify", "--url", "https://127.0.0.1:1", "--token-file", tmp_path / "missing",
        "--directory", tmp_path / "d.jws", "--directory-key", tmp_path / "k.jwk", "--authority", "ar.mj",
    )  # fmt: skip
    assert line.startswith("comity: ") and "missing" in line
    result = run("user", "list", "--config", config, env={**ENV, "COMITY_DEBUG": "1"})
    assert result.exit_code != 0 and not isinstance(result.exception, SystemExit)  # the traceback, on request


@pytest.mark.parametrize(
    "url",
    [
        "http://auditor:S3CRETPW@127.0.0.1:notaport/",  # aiohttp's refusal of it repeated the whole address
        "ftp://auditor:S3CRETPW@127.0.0.1/",
        "https://auditor:S3CRETPW@127.0.0.1:8080/",  # well formed: it would be named in every line of the report
    ],
)
def test_an_auditor_url_with_a_password_is_refused_without_repeating_it(url: str) -> None:
    """Decision 95: an error never shows what may hold a secret, a URL with its password included."""
    line = fails(
        "audit", "export", "--url", url, "--format", "jsonl", env={**ENV, "COMITY_AUDIT_TOKEN": "cmt_" + "a" * 43}
    )
    assert line == "comity: --url must be an http:// or https:// address with a host and no user name or password"


def test_the_passphrase_from_the_file_named_by_the_file_variable(tmp_path: Path) -> None:
    """COMITY_PASSPHRASE_FILE (a container secret) is read by the commands themselves, trailing newlines dropped as
    docker/entrypoint.sh drops them; COMITY_DIRECTORY_PASSPHRASE_FILE likewise."""
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    secret = tmp_path / "passphrase"
    secret.write_text(f"{ENV['COMITY_PASSPHRASE']}\n")
    env = {**ENV, "COMITY_PASSPHRASE": None, "COMITY_PASSPHRASE_FILE": str(secret)}
    result = run("keys", "list", "--config", data_dir / "comity.toml", env=env)
    assert result.exit_code == 0, result.output
    assert "signing" in result.output
    # set but empty, the file variable is unset, as the entrypoint reads it
    result = run("keys", "list", "--config", data_dir / "comity.toml", env={**ENV, "COMITY_PASSPHRASE_FILE": ""})
    assert result.exit_code == 0, result.output
    directory_secret = tmp_path / "directory-passphrase"
    directory_secret.write_text("directory operator passphrase\n\n")
    env = {"COMITY_DIRECTORY_PASSPHRASE": None, "COMITY_DIRECTORY_PASSPHRASE_FILE": str(directory_secret)}
    assert run("directory", "keygen", "--out", tmp_path / "dk.sealed", "--kdf-fast", env=env).exit_code == 0
    keys = unseal_keys((tmp_path / "dk.sealed").read_bytes(), b"directory operator passphrase")
    assert list(keys) == ["directory"]


def test_a_passphrase_file_that_cannot_be_used_is_one_line_without_its_contents(tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    config = data_dir / "comity.toml"
    missing = tmp_path / "missing"
    line = fails(
        "keys", "list", "--config", config, env={"COMITY_PASSPHRASE": None, "COMITY_PASSPHRASE_FILE": str(missing)}
    )
    assert line == f"comity: COMITY_PASSPHRASE_FILE names {missing}, which cannot be read (No such file or directory)"
    secret = tmp_path / "passphrase"
    secret.write_text("the-wrong-passphrase\n")
    line = fails("keys", "list", "--config", config, env={**ENV, "COMITY_PASSPHRASE_FILE": str(secret)})
    assert line == "comity: both COMITY_PASSPHRASE and COMITY_PASSPHRASE_FILE are set; set only one"
    line = fails(
        "keys", "list", "--config", config, env={"COMITY_PASSPHRASE": None, "COMITY_PASSPHRASE_FILE": str(secret)}
    )
    assert line == "comity: wrong passphrase or corrupt key file"
    secret.write_bytes(b"\xffpassphrase\n")
    line = fails(
        "keys", "list", "--config", config, env={"COMITY_PASSPHRASE": None, "COMITY_PASSPHRASE_FILE": str(secret)}
    )
    assert line == f"comity: COMITY_PASSPHRASE_FILE ({secret}) is not valid UTF-8"
    secret.write_text("\n")
    line = fails(
        "keys", "list", "--config", config, env={"COMITY_PASSPHRASE": None, "COMITY_PASSPHRASE_FILE": str(secret)}
    )
    assert "the passphrase must not be empty" in line


def test_a_message_age_beyond_ten_years_is_a_settings_error(tmp_path: Path) -> None:
    """An unbounded max_message_age_seconds overflowed datetime arithmetic later ('unexpected error
    (OverflowError)', nothing named); it is refused as a setting, and ten years is accepted."""
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    config = data_dir / "comity.toml"
    line = fails(
        "keys", "rotate", "signing", "--config", config, env={**ENV, "COMITY_MAX_MESSAGE_AGE_SECONDS": str(10**12)}
    )
    assert "max_message_age_seconds: Input should be less than or equal to 315360000" in line
    assert "OverflowError" not in line
    result = run("keys", "list", "--config", config, env={**ENV, "COMITY_MAX_MESSAGE_AGE_SECONDS": "315360000"})
    assert result.exit_code == 0, result.output


def test_db_upgrade_prints_the_revision_reached_and_refuses_to_go_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    init(data_dir, "ar.mj", "AR", 8443)
    config = data_dir / "comity.toml"
    assert ok("db", "upgrade", "--config", config, "--revision", "0012").output == "database at 0012\n"
    assert ok("db", "upgrade", "--config", config).output == f"database at {HEAD_REVISION}\n"
    line = fails("db", "upgrade", "--config", config, "--revision", "base")
    assert line == f"comity: the database is at {HEAD_REVISION}, above 'base': 'comity db upgrade' never downgrades"
    assert ok("db", "upgrade", "--config", config).output == f"database at {HEAD_REVISION}\n"


def test_a_new_key_passphrase_has_at_least_twelve_characters(tmp_path: Path) -> None:
    data_dir = tmp_path / "ar"
    line = fails(*_init_args(data_dir), env={**ENV, "COMITY_PASSPHRASE": "x" * 11})
    assert line == "comity: the passphrase must have at least 12 characters, as a user's password"
    assert [name for name in TARGETS if (data_dir / name).exists()] == []
    key = tmp_path / "directory-key.sealed"
    line = fails("directory", "keygen", "--out", key, "--kdf-fast", env={"COMITY_DIRECTORY_PASSPHRASE": "short"})
    assert line == "comity: the directory key passphrase must have at least 12 characters, as a user's password"
    assert not key.exists()
    assert run(*_init_args(data_dir), env={**ENV, "COMITY_PASSPHRASE": "x" * 12}).exit_code == 0


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (
            ["keys", "rotate", "bogus"],
            "comity: Invalid value for '{signing|encryption|archive}': 'bogus' is not one of",
        ),
        (["--bogus"], "comity: No such option '--bogus'; see '"),
        (["nosuch"], "comity: No such command 'nosuch'; see '"),
        (
            ["directory", "verify", "missing.jws", "--key", "missing.jwk"],
            "comity: Invalid value for '--key': File 'mis",
        ),
        (["user", "create", "alice", "--token-days", "400"], "comity: Invalid value for '--token-days': 400 is not"),
    ],
)
def test_a_command_line_click_refuses_is_one_line_too(args: list[str], start: str, tmp_path: Path) -> None:
    """An unknown option, a value out of range or a file that does not exist is one line, exit code 2 (a review of
    the docs found click's usage block instead)."""
    result = run(*args, "--config", tmp_path / "none.toml") if args[0] == "user" else run(*args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(start) and line.endswith("--help'"), line
    assert result.stdout == ""


def test_a_group_named_without_a_command_shows_its_help() -> None:
    result = run("keys")
    assert result.exit_code == 2 and "rotate-tls" in result.output and not result.output.startswith("comity:")
