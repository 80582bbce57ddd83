"""``comity keys``: list an authority's keys, and rotate its encryption or archive key.

A rotation writes a fresh key into ``keys.sealed`` (same passphrase, same argon2id parameters) and keeps the one it
replaces, retired, to open what was sealed to it. Rotating the encryption key also lists the new key in
``entry.json`` next to the old ones, which stay valid ``--overlap-days`` longer; the directory operator adds the
entry to the next directory (``comity directory add --replace``). Restart the gateway (every replica) to use the new
key set (docs/operations.md, "Directory and key rotation").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from config.directory import load_authority_entry
from config.directory_model import DirectoryKey
from config.settings import PASSPHRASE_ENV
from crypto.keys import AuthorityKeys, Decrypting, key_id, public_jwk, sealed_kdf_params
from gateway.cli.common import CommandError, read_passphrase, replace_file, reports_errors
from gateway.cli.init import ENTRY_FILE
from gateway.cli.runtime import config_option, settings_from
from protocol.timefmt import format_time

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """An authority's private keys: list them, rotate the encryption or the archive key."""


def _unseal(config_file: Path | None) -> tuple[Path, bytes, bytes, AuthorityKeys]:
    """The key file's path and contents, the passphrase, and the keys it holds."""
    path = settings_from(config_file).keys_path
    try:
        sealed = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read the key file {path}: {exc.strerror}") from None
    passphrase = read_passphrase(PASSPHRASE_ENV, confirm=False)
    return path, sealed, passphrase, AuthorityKeys.unseal(sealed, passphrase)


@keys.command(name="list")
@config_option
@reports_errors
def list_keys(config_file: Path | None) -> None:
    """Print each key's role, kid and whether it is current or retired (never key material)."""
    *_, held = _unseal(config_file)
    click.echo(f"signing     current  {key_id(held.signing)}")
    for role in ("encryption", "archive"):
        current = held.encryption if role == "encryption" else held.archive
        click.echo(f"{role:<11} current  {key_id(current)}")
        for kid in held.decryption_keys(role):
            if kid != key_id(current):
                click.echo(f"{role:<11} retired  {kid}")


@keys.command()
@click.argument("role", type=click.Choice(["encryption", "archive"]))
@click.option(
    "--overlap-days",
    type=click.IntRange(1, 3650),
    default=30,
    show_default=True,
    help="How long entry.json keeps the old encryption key valid next to the new one.",
)
@config_option
@reports_errors
def rotate(role: Decrypting, overlap_days: int, config_file: Path | None) -> None:
    """Replace the ROLE key with a fresh one; the old one is kept, retired, to open what was sealed to it."""
    settings = settings_from(config_file)
    path, sealed, passphrase, held = _unseal(config_file)
    entry_path = settings.data_dir / ENTRY_FILE
    now = datetime.now(UTC)
    rotated = held.rotated(role)
    entry_bytes: bytes | None = None
    if role == "encryption":
        if not entry_path.exists():
            raise CommandError(f"{entry_path} is missing: the new encryption key must be published in the entry")
        entry = load_authority_entry(entry_path.read_bytes())
        if key_id(held.encryption) not in {key.kid for key in entry.keys if key.use == "enc"}:
            # an earlier rotation stopped between the two writes: that key was never published, and stays retired
            click.echo(
                f"note: {ENTRY_FILE} did not list the current encryption key {key_id(held.encryption)}", err=True
            )
        cutoff = format_time(now + timedelta(days=overlap_days))
        published = [  # every encryption key listed so far stops at the cutoff, whatever happened before
            key.model_copy(update={"not_after": cutoff})
            if key.use == "enc" and (key.not_after is None or key.not_after > cutoff)
            else key
            for key in entry.keys
        ]
        fresh = DirectoryKey(use="enc", jwk=public_jwk(rotated.encryption), not_before=format_time(now))
        entry_bytes = entry.model_copy(update={"keys": [*published, fresh]}).model_dump_json(indent=2).encode()
        load_authority_entry(entry_bytes)  # the whole entry still validates before anything is written
    resealed = rotated.seal(passphrase, sealed_kdf_params(sealed))
    check = AuthorityKeys.unseal(resealed, passphrase)  # what is about to replace the only copy opens, to these keys
    if repr(check) != repr(rotated) or set(check.decryption_keys(role)) != set(rotated.decryption_keys(role)):
        raise CommandError("the new key file does not open to the new key set; nothing was written")
    if path.read_bytes() != sealed:
        raise CommandError(f"{path} changed while rotating (another rotation?); nothing was written: run it again")
    # the keys first: after a crash between the two, the key set opens both and a new rotation writes the entry
    replace_file(path, resealed, private=True)
    if entry_bytes is not None:
        replace_file(entry_path, entry_bytes + b"\n")
    new_kid = key_id(rotated.encryption if role == "encryption" else rotated.archive)
    click.echo(f"{role} key rotated: current {new_kid}; retired {key_id(getattr(held, role))} (kept in {path.name})")
    if role == "encryption":
        click.echo(
            f"next: send {ENTRY_FILE} to the directory operator ('comity directory add DRAFT {ENTRY_FILE} "
            "--replace', then sign); restart the gateway"
        )
    else:
        click.echo("next: restart the gateway")
