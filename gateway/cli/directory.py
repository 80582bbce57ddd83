"""``comity directory``: the directory operator's tools (key, drafts, signing) and every gateway's verification.

The workflow (docs/configuration.md): ``keygen`` once; ``new`` a draft; ``add`` each authority's entry.json;
``sign`` it; give directory.jws and the public key (FILE.pub.jwk, installed as directory-key.jwk) to every gateway,
which ``verify`` it. To publish a change, ``new --from`` the current directory (serial + 1), ``add``, ``sign``
(``--replace`` to write over the previous directory.jws, whose serial is lower).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import click
from joserfc.jwk import OKPKey

from config.directory import (
    DIRECTORY_VERSION,
    Directory,
    dump_directory_draft,
    format_time,
    load_authority_entry,
    load_directory_draft,
    load_directory_key,
    parse_time,
    sign_directory,
    signed_serial,
    verify_directory,
    verify_directory_signature,
)
from crypto.keys import DEFAULT_KDF, generate_signing_key, key_id, public_jwk, seal_keys, unseal_keys
from gateway.cli.common import (
    FAST_KDF,
    CommandError,
    read_passphrase,
    replace_file,
    reports_errors,
    write_new_file,
    write_new_files,
)

__all__ = ["directory"]

DIRECTORY_PASSPHRASE_ENV: Final = "COMITY_DIRECTORY_PASSPHRASE"  # noqa: S105 (a variable name)
_KEY_NAME: Final = "directory"

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_new_file = click.Path(dir_okay=False, path_type=Path)


def _pinned_key(path: Path) -> OKPKey:
    return load_directory_key(path.read_bytes())


def _now() -> datetime:
    return datetime.now(UTC)


@click.group()
def directory() -> None:
    """Create, sign and verify the signed directory of authorities."""


@directory.command()
@click.option("--out", required=True, type=_new_file, help="Sealed private key file to create.")
@click.option("--kdf-fast", is_flag=True, hidden=True, help="Cheap argon2id parameters: tests and the benchmark only.")
@reports_errors
def keygen(out: Path, kdf_fast: bool) -> None:
    """Create the directory signing key: OUT (sealed private key) and OUT.pub.jwk (the key gateways pin).

    The passphrase comes from COMITY_DIRECTORY_PASSPHRASE or a prompt.
    """
    public_path = out.with_name(out.name + ".pub.jwk")
    for path in (out, public_path):
        if path.exists():
            raise CommandError(f"{path} already exists; refusing to overwrite a directory key")
    passphrase = read_passphrase(DIRECTORY_PASSPHRASE_ENV, confirm=True, what="directory key passphrase", new=True)
    key = generate_signing_key()
    sealed = seal_keys({_KEY_NAME: key}, passphrase, FAST_KDF if kdf_fast else DEFAULT_KDF)
    public = json.dumps(public_jwk(key), indent=2).encode("utf-8") + b"\n"
    write_new_files([(out, sealed, True), (public_path, public, False)])  # both or neither
    click.echo(f"directory key kid {key_id(key)}")
    click.echo(f"  {out}  private key, sealed with the passphrase: keep it offline")
    click.echo(f"  {public_path}  public key: every gateway installs it as directory-key.jwk")


@directory.command()
@click.option("--out", required=True, type=_new_file, help="Draft file to create.")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=90, show_default=True)
@click.option("--from", "previous", type=_existing_file, help="Current signed directory to extend (serial + 1).")
@click.option("--key", type=_existing_file, help="Pinned public key (JWK) that signed --from.")
@reports_errors
def new(out: Path, expires_in_days: int, previous: Path | None, key: Path | None) -> None:
    """Start a draft: serial 1 and no authorities, or the authorities of --from with its serial + 1."""
    if out.exists():
        raise CommandError(f"{out} already exists; refusing to overwrite a draft")
    if (previous is None) != (key is None):
        raise CommandError("--from and --key go together: the signed directory and the key that signed it")
    now = _now()
    serial, authorities = 1, []
    if previous is not None and key is not None:
        # An expired directory may still be extended: only the signature and the schema are checked here.
        current = verify_directory_signature(previous.read_bytes(), _pinned_key(key))
        serial, authorities = current.serial + 1, [entry.to_json() for entry in current.authorities]
    draft = load_directory_draft(
        json.dumps(
            {
                "v": DIRECTORY_VERSION,
                "serial": serial,
                "issued_at": format_time(now),
                "expires_at": format_time(now + timedelta(days=expires_in_days)),
                "authorities": authorities,
            }
        ).encode()
    )
    write_new_file(out, dump_directory_draft(draft), private=False)
    click.echo(f"draft serial {draft.serial} with {len(draft.authorities)} authorities, expires {draft.expires_at}")


@directory.command()
@click.argument("draft_path", metavar="DRAFT", type=_existing_file)
@click.argument("entry_path", metavar="ENTRY", type=_existing_file)
@click.option("--replace", is_flag=True, help="Replace the entry of an authority already in the draft.")
@reports_errors
def add(draft_path: Path, entry_path: Path, replace: bool) -> None:
    """Add an authority's entry.json (from 'comity init') to DRAFT, after validating it."""
    draft = load_directory_draft(draft_path.read_bytes())
    entry = load_authority_entry(entry_path.read_bytes())
    replacing = replace and any(existing.id == entry.id for existing in draft.authorities)
    updated = draft.with_entry(entry, replace=replace)
    replace_file(draft_path, dump_directory_draft(updated))
    click.echo(f"{'replaced' if replacing else 'added'} {entry.id} ({entry.name}); {len(updated.authorities)} in draft")


@directory.command()
@click.argument("draft_path", metavar="DRAFT", type=_existing_file)
@click.option("--key", "key_path", required=True, type=_existing_file, help="Sealed directory key (from keygen).")
@click.option("--out", required=True, type=_new_file, help="Signed directory to write, e.g. directory.jws.")
@click.option("--replace", is_flag=True, help="Replace an existing --out holding a lower serial than DRAFT.")
@click.option(
    "--allow-expiring-tls",
    is_flag=True,
    help="Sign although a listed TLS certificate expires before the directory does (a warning for each).",
)
@reports_errors
def sign(draft_path: Path, key_path: Path, out: Path, replace: bool, allow_expiring_tls: bool) -> None:
    """Sign DRAFT, issued now; the passphrase comes from COMITY_DIRECTORY_PASSPHRASE or a prompt.

    OUT must not exist, unless --replace is given and OUT is no signed directory of DRAFT's serial or a higher one.
    Every listed gateway's TLS certificate (the later one during a rollover) must be valid until the directory
    expires, unless --allow-expiring-tls is given.
    """
    draft = load_directory_draft(draft_path.read_bytes())
    _check_out(out, draft, key_path=key_path, draft_path=draft_path, replace=replace)
    _check_tls_validity(draft, allow=allow_expiring_tls)
    passphrase = read_passphrase(DIRECTORY_PASSPHRASE_ENV, confirm=False, what="directory key passphrase")
    keys = unseal_keys(key_path.read_bytes(), passphrase)
    signing_key = keys.get(_KEY_NAME)
    if signing_key is None:
        raise CommandError(f"{key_path} is not a directory key file (made by 'comity directory keygen')")
    now = _now()
    token = sign_directory(draft.reissued(now), signing_key)
    signed = verify_directory(token, signing_key, now=now)  # never hand out what we would not accept
    if replace:
        replace_file(out, token.encode("ascii") + b"\n")
    else:
        write_new_file(out, token.encode("ascii") + b"\n", private=False)
    click.echo(
        f"signed directory serial {signed.serial} with {len(signed.authorities)} authorities, "
        f"expires {signed.expires_at}, key kid {key_id(signing_key)}: {out}"
    )


def _expiring_tls(directory: Directory) -> list[str]:
    """One line for each listed gateway that peers could no longer reach before ``directory`` expires."""
    expires = parse_time(directory.expires_at)
    return [
        f"the TLS certificate of {entry.id} expires at {format_time(entry.tls_not_after)}, before the directory "
        f"({directory.expires_at}): peers would refuse every connection to it from then on"
        for entry in directory.authorities
        if entry.tls_not_after < expires
    ]


def _check_tls_validity(draft: Directory, *, allow: bool) -> None:
    expiring = _expiring_tls(draft)
    if expiring and not allow:
        more = f" (and {len(expiring) - 1} more)" if len(expiring) > 1 else ""
        raise CommandError(
            f"{expiring[0]}{more}. Have its certificate replaced ('comity keys rotate-tls') and its entry added "
            "again, or make a draft that expires by then ('comity directory new --expires-in-days'), or give "
            "--allow-expiring-tls; nothing was signed"
        )
    for line in expiring:
        click.echo(f"warning: {line}", err=True)
    for entry in draft.authorities:
        if entry.tls_next_pin is not None:
            click.echo(f"note: {entry.id} {_ROLLOVER_NOTE}", err=True)


# members a gateway of an earlier version does not know: its strict schema refuses the whole directory (decision 174)
_ROLLOVER_NOTE = (
    "is in a TLS certificate rollover (tls_next_cert): gateways of a Comity version from before 'comity keys "
    "rotate-tls' refuse a directory that lists one, so every counterpart must run a later version first"
)


def _check_out(out: Path, draft: Directory, *, key_path: Path, draft_path: Path, replace: bool) -> None:
    """Refuse an ``--out`` that would destroy the key, the draft, or a directory already published (its serial)."""
    if not out.exists():
        return
    for source, what in ((key_path, "--key"), (draft_path, "DRAFT")):
        if out.samefile(source):
            raise CommandError(f"--out {out} is the same file as {what}; choose another --out")
    if not replace:
        raise CommandError(f"{out} already exists; give --replace to replace it with the signed directory")
    published = signed_serial(out.read_bytes())
    if published is not None and published >= draft.serial:
        raise CommandError(
            f"{out} is a signed directory of serial {published}, not lower than the draft's {draft.serial}: gateways "
            "that installed it would refuse another with the same serial; start a new draft with 'comity directory "
            "new --from'"
        )


def _summary(signed: Directory) -> list[str]:
    lines = [
        f"directory serial {signed.serial}, issued {signed.issued_at}, expires {signed.expires_at}, "
        f"{len(signed.authorities)} authorities"
    ]
    for entry in signed.authorities:
        rollover = f" (rollover to {entry.tls_next_pin})" if entry.tls_next_pin else ""
        lines.append(
            f"  {entry.id}  {entry.country}  {entry.name}  {entry.endpoint}  {','.join(entry.roles)}  "
            f"accredited to {entry.accreditation.max_level}  TLS until {format_time(entry.tls_not_after)}{rollover}"
        )
    return lines


@directory.command()
@click.argument("directory_path", metavar="DIRECTORY", type=_existing_file)
@click.option("--key", "key_path", required=True, type=_existing_file, help="Pinned directory public key (JWK).")
@click.option("--min-serial", type=click.IntRange(0), default=0, show_default=True, help="Highest serial seen before.")
@reports_errors
def verify(directory_path: Path, key_path: Path, min_serial: int) -> None:
    """Verify DIRECTORY under the pinned key: signature, schema, expiry and serial."""
    signed = verify_directory(directory_path.read_bytes(), _pinned_key(key_path), now=_now(), min_serial=min_serial)
    for line in _summary(signed):
        click.echo(line)
    for line in _expiring_tls(signed):
        click.echo(f"warning: {line}", err=True)


@directory.command()
@click.argument("directory_path", metavar="DIRECTORY", type=_existing_file)
@click.option("--key", "key_path", required=True, type=_existing_file, help="Pinned directory public key (JWK).")
@reports_errors
def show(directory_path: Path, key_path: Path) -> None:
    """Print the verified DIRECTORY as JSON."""
    signed = verify_directory(directory_path.read_bytes(), _pinned_key(key_path), now=_now())
    click.echo(json.dumps(signed.to_json(), indent=2, ensure_ascii=False))
