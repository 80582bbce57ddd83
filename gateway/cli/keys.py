"""``comity keys``: list an authority's keys, rotate its signing, encryption or archive key, and replace its TLS
certificate (``rotate-tls``: the next certificate pinned beside the current one first, then put in its place).

A rotation writes a fresh key into ``keys.sealed`` (same passphrase, same argon2id parameters) and keeps the one it
replaces, retired: to open what was sealed to it, or to sign with until the new signing key is valid. Rotating the
encryption key also lists the new key in ``entry.json`` next to the old ones, which stay valid ``--overlap-days``
longer. Rotating the signing key lists the new one in ``entry.json`` as valid from when the installed directory
expires (counterparts verify us under the directory they hold until then), keeps the old ones valid
``--overlap-days`` after that, and re-encrypts the TLS key under the new key's password (the certificate and its pin
do not change). The directory operator adds the entry to the next directory (``comity directory add --replace``).
Restart the gateway (every replica) to use the new key set (docs/operations.md, "Directory and key rotation").
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import click
from cryptography import x509
from joserfc.jwk import OKPKey

from config.directory import load_authority_entry, read_directory
from config.directory_model import AuthorityEntry, DirectoryKey
from config.errors import ConfigError
from config.settings import PASSPHRASE_ENV, Settings
from crypto.keys import (
    AuthorityKeys,
    Rotating,
    key_id,
    public_jwk,
    sealed_kdf_params,
    tls_key_password,
    tls_key_passwords,
)
from crypto.tls import cert_der, certificate_hosts, certificate_pin, generate_tls_identity, reencrypt_key_pem
from gateway.cli.common import CommandError, read_passphrase, replace_file, reports_errors, write_new_files
from gateway.cli.init import ENTRY_FILE
from gateway.cli.runtime import config_option, settings_from
from gateway.logs import get_logger
from protocol.timefmt import format_time, parse_time

__all__ = ["keys", "keys_in_use"]


@click.group()
def keys() -> None:
    """An authority's private keys: list them, rotate the signing, the encryption or the archive key, replace the
    TLS certificate."""


def _unseal_file(path: Path) -> tuple[bytes, bytes, AuthorityKeys]:
    """The key file's contents, the passphrase, and the keys it holds."""
    try:
        sealed = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read the key file {path}: {exc.strerror}") from None
    passphrase = read_passphrase(PASSPHRASE_ENV, confirm=False)
    return sealed, passphrase, AuthorityKeys.unseal(sealed, passphrase)


@keys.command(name="list")
@config_option
@reports_errors
def list_keys(config_file: Path | None) -> None:
    """Print each key's role, kid and whether it is current or retired (never key material)."""
    *_, held = _unseal_file(settings_from(config_file).keys_path)
    click.echo(f"signing     current  {key_id(held.signing)}")
    for kid in list(held.signing_keys())[1:]:
        click.echo(f"signing     retired  {kid}")
    for role in ("encryption", "archive"):
        current = held.encryption if role == "encryption" else held.archive
        click.echo(f"{role:<11} current  {key_id(current)}")
        for kid in held.decryption_keys(role):
            if kid != key_id(current):
                click.echo(f"{role:<11} retired  {kid}")


@keys.command()
@click.argument("role", type=click.Choice(["signing", "encryption", "archive"]))
@click.option(
    "--overlap-days",
    type=click.IntRange(1, 3660),  # the signing minimum at the largest max_message_age_seconds (ten years) fits
    default=None,
    help="How long entry.json keeps the old keys valid next to the new one: encryption keys from now (default 30; at "
    "least until the installed directory expires, which counterparts may use until then), signing keys from when the "
    "new one takes over (default and least: max_message_age_seconds plus twice the clock skew, in whole days, since "
    "an envelope signed just before may wait that long in an outbox).",
)
@config_option
@reports_errors
def rotate(role: Rotating, overlap_days: int | None, config_file: Path | None) -> None:
    """Replace the ROLE key with a fresh one; the old one is kept, retired (to open what was sealed to it, or to sign
    with until the new signing key is valid)."""
    settings = settings_from(config_file)
    least = _signing_overlap_days(settings) if role == "signing" else 1
    if overlap_days is not None and overlap_days < least:
        raise CommandError(
            f"--overlap-days must be at least {least} for a signing key: an envelope signed just before the new "
            "key takes over may wait in an outbox until max_message_age_seconds, and is verified when it arrives"
        )
    if overlap_days is None:
        overlap_days = least if role == "signing" else 30
    with _locked(settings.keys_path):
        _rotate(settings, role, overlap_days)


def _signing_overlap_days(settings: Settings) -> int:
    seconds = settings.max_message_age_seconds + 2 * settings.max_clock_skew_seconds
    return -(-seconds // 86400)


# Why a lock file cannot be made in a directory we may not write: a read-only mount, or one owned by another user.
_READ_ONLY: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


@contextmanager
def _flock(keys_path: Path, operation: int, refusal: str, *, optional: bool = False) -> Iterator[None]:
    """``flock`` the lock file beside the key file for as long as the block runs, or refuse at once. A lock file
    another user made (readable by all: it holds nothing) is locked through a read-only descriptor, which ``flock``
    allows. When ``optional`` and there is no lock file and none can be made (a read-only directory), the block
    runs unlocked after one warning: a rotation, which writes keys.sealed beside it, cannot run there either."""
    lock = keys_path.with_name(f".{keys_path.name}.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            if not optional:
                raise exc from None
            get_logger().warning("keys_lock_unavailable", lock=str(lock), error=errno.errorcode.get(exc.errno or 0, ""))
            yield
            return
    try:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(f"{lock} is held: {refusal}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _locked(keys_path: Path) -> AbstractContextManager[None]:
    """One rotation at a time on a key file (two at once could each publish a key the other's file lost), and none
    while a gateway on this host serves with it (``comity serve`` holds the lock shared, :func:`keys_in_use`): a
    running gateway would go on with the keys and TLS password it read at start."""
    busy = "a gateway is serving with these keys, or another 'comity keys rotate' runs; stop the gateway first"
    return _flock(keys_path, fcntl.LOCK_EX, f"{busy}. Nothing was written")


def keys_in_use(keys_path: Path) -> AbstractContextManager[None]:
    """Held by ``comity serve`` while it runs: shared, so that replicas on this host coexist and a rotation waits.
    Keys on a read-only mount are served without it (a warning is logged): no rotation can write there anyway."""
    return _flock(keys_path, fcntl.LOCK_SH, "'comity keys rotate' is changing the keys; try again", optional=True)


def _rotate(settings: Settings, role: Rotating, overlap_days: int) -> None:
    path = settings.keys_path
    sealed, passphrase, held = _unseal_file(path)
    entry_path = settings.data_dir / ENTRY_FILE
    now = datetime.now(UTC)
    rotated = held.rotated(role)
    entry_bytes: bytes | None = None
    entry_before = b""
    takes_over = now
    if role in ("encryption", "signing"):
        entry_path, entry_before, entry = _entry(settings, f"the new {role} key")
        # counterparts use the directory they hold until it expires: they seal to the old encryption keys and verify
        # us under the old signing keys so long. A new encryption key is valid at once (we open both); a new signing
        # key only from then (we sign with one key at a time, decision 73), the old ones overlap_days longer.
        expiry = _directory_expiry(settings, now)
        if role == "encryption":
            cutoff_at = max(now + timedelta(days=overlap_days), expiry)
        else:
            takes_over = max(now, expiry)
            cutoff_at = takes_over + timedelta(days=overlap_days)
        use: Literal["sig", "enc"] = "enc" if role == "encryption" else "sig"
        fresh = DirectoryKey(use=use, jwk=public_jwk(getattr(rotated, role)), not_before=format_time(takes_over))
        published = _entry_with(entry, fresh, role, getattr(held, role), format_time(cutoff_at), now)
        entry_bytes = published.to_file()
        load_authority_entry(entry_bytes)  # the whole entry still validates before anything is written
    tls_before = tls_after = b""
    if role == "signing":  # the TLS key's password is derived from the signing key (crypto/keys.py)
        tls_before = settings.tls_key_path.read_bytes()
        # under the current key's password, or a retired one's if an earlier rotation stopped before this write
        tls_after = reencrypt_key_pem(tls_before, tls_key_passwords(held), tls_key_password(rotated))
    resealed = rotated.seal(passphrase, sealed_kdf_params(sealed))
    check = AuthorityKeys.unseal(resealed, passphrase)  # what is about to replace the only copy opens, to these keys
    if repr(check) != repr(rotated) or _kids(check) != _kids(rotated):  # the current kids, then every kid
        raise CommandError("the new key file does not open to the new key set; nothing was written")
    if (
        path.read_bytes() != sealed
        or (entry_bytes is not None and entry_path.read_bytes() != entry_before)
        or (role == "signing" and settings.tls_key_path.read_bytes() != tls_before)
    ):
        raise CommandError(
            f"{path.name}, {ENTRY_FILE} or the TLS key changed while rotating; nothing was written: run it again"
        )
    new_kid = key_id(getattr(rotated, role))
    # the keys first: after a crash between the writes, the key set opens everything (the TLS key under a retired
    # signing key's password too) and a new rotation writes the entry
    replace_file(path, resealed, private=True)
    try:
        if entry_bytes is not None:
            replace_file(entry_path, entry_bytes)
        if role == "signing":
            replace_file(settings.tls_key_path, tls_after, private=True)
    except OSError as exc:
        raise CommandError(
            f"{path.name} now holds the new {role} key {new_kid}, but {exc.filename or ENTRY_FILE} could not be "
            f"written or made durable ({exc.strerror}); check it, or run 'comity keys rotate {role}' again"
        ) from None
    click.echo(f"{role} key rotated: current {new_kid}; retired {key_id(getattr(held, role))} (kept in {path.name})")
    if role == "signing":
        click.echo(f"the new signing key takes over at {format_time(takes_over)}, once the directory lists it")
    if role in ("encryption", "signing"):
        click.echo(
            f"next: send {ENTRY_FILE} to the directory operator ('comity directory add DRAFT {ENTRY_FILE} "
            "--replace', then sign); restart the gateway"
        )
    else:
        click.echo("next: restart the gateway")


def _kids(keys: AuthorityKeys) -> tuple[set[str], ...]:
    """Every kid of a key set, by role (signing, encryption, archive; current and retired)."""
    return (set(keys.signing_keys()), set(keys.decryption_keys("encryption")), set(keys.decryption_keys("archive")))


def _entry_with(
    entry: AuthorityEntry, fresh: DirectoryKey, role: str, current: OKPKey, cutoff: str, now: datetime
) -> AuthorityEntry:
    """``entry`` with ``fresh`` added and every other key of its use valid until ``cutoff`` at the latest. Encryption
    keys that ended already are left out (no one may seal to them); signing keys stay, ended or not: what they signed
    (receipts, checkpoints) is verified under the keys the directory lists."""
    if key_id(current) not in {key.kid for key in entry.keys if key.use == fresh.use}:
        # an earlier rotation stopped between its writes: that key was never published, and stays retired
        click.echo(f"note: {ENTRY_FILE} did not list the current {role} key {key_id(current)}", err=True)
    published = []
    for key in entry.keys:
        if key.use != fresh.use:
            published.append(key)
            continue
        if key.use == "enc" and key.not_after is not None and key.not_after <= format_time(now):
            continue
        if key.not_after is not None and key.not_after <= format_time(now):
            published.append(key)  # an ended signing key: kept as it is
            continue
        if key.not_before >= cutoff:
            raise CommandError(f"{ENTRY_FILE} lists {role} key {key.kid} from {key.not_before}, after the cutoff")
        if key.not_after is None or key.not_after > cutoff:
            key = key.model_copy(update={"not_after": cutoff})
        published.append(key)
    return entry.model_copy(update={"keys": [*published, fresh]})


def _directory_expiry(settings: Settings, now: datetime) -> datetime:
    """When the installed directory expires (now, if there is none to read: a gateway not yet listed)."""
    try:
        return parse_time(read_directory(settings, now=now).expires_at)
    except ConfigError as exc:
        click.echo(f"note: no installed directory to keep the old keys valid through ({exc.code})", err=True)
        return now


# -- the TLS certificate ------------------------------------------------------------------------------------------


def _next_paths(settings: Settings) -> tuple[Path, Path]:
    """Where a prepared rollover keeps the next certificate and its key: beside the current ones, ``.next`` added."""
    cert, key = settings.tls_cert_path, settings.tls_key_path
    return cert.with_name(f"{cert.stem}.next{cert.suffix}"), key.with_name(f"{key.stem}.next{key.suffix}")


def _entry(settings: Settings, what: str) -> tuple[Path, bytes, AuthorityEntry]:
    """``entry.json``: its path, its bytes as read (to tell whether it changed meanwhile) and the entry; ``what`` is
    to be published in it."""
    entry_path = settings.data_dir / ENTRY_FILE
    try:
        data = entry_path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{entry_path} is missing: {what} must be published in the entry") from None
    return entry_path, data, load_authority_entry(data)


def _with_tls(entry: AuthorityEntry, **members: str | None) -> AuthorityEntry:
    """``entry`` with its TLS members set (None: left out), validated as a whole."""
    document = {**entry.to_json(), **members}
    kept = {name: value for name, value in document.items() if value is not None}
    return load_authority_entry(json.dumps(kept).encode())


def _b64(cert_pem: bytes) -> str:
    return base64.b64encode(cert_der(cert_pem)).decode("ascii")


@keys.command(name="rotate-tls")
@click.option(
    "--activate",
    is_flag=True,
    help="Put the prepared certificate in place of the current one; the installed directory must pin it already.",
)
@config_option
@reports_errors
def rotate_tls(activate: bool, config_file: Path | None) -> None:
    """Replace the gateway's TLS certificate without a break in federation (decision 174).

    First, with the gateway running, make the next certificate and key (beside the current ones, '.next' added) and
    list the certificate in entry.json as the entry's next one; send entry.json to the directory operator. A
    directory that lists it has peers accept either certificate. Once every counterpart has installed that directory,
    stop the gateway, run this again with --activate, and start the gateway: it now presents the new certificate.
    The next directory can then publish the new certificate alone.
    """
    settings = settings_from(config_file)
    if activate:
        with _locked(settings.keys_path):
            _activate_tls(settings)
    else:
        _prepare_tls(settings)


def _prepare_tls(settings: Settings) -> None:
    _, _, held = _unseal_file(settings.keys_path)
    entry_path, entry_before, entry = _entry(settings, "the certificate")
    cert_next, key_next = _next_paths(settings)
    if cert_next.exists() or key_next.exists():
        raise CommandError(
            f"{cert_next.name} or {key_next.name} exists: a rollover is prepared already. Finish it with "
            f"'comity keys rotate-tls --activate', or remove both files to prepare another"
        )
    current = settings.tls_cert_path.read_bytes()
    if certificate_pin(current) != entry.tls_pin:
        raise CommandError(
            f"{settings.tls_cert_path} is not the certificate {ENTRY_FILE} publishes ({entry.tls_pin}); "
            "nothing was written"
        )
    identity = generate_tls_identity(entry.id, certificate_hosts(current), tls_key_password(held))
    pin = certificate_pin(identity.cert_pem)
    published = _with_tls(entry, tls_next_cert=_b64(identity.cert_pem), tls_next_pin=pin)
    write_new_files([(key_next, identity.key_pem, True), (cert_next, identity.cert_pem, False)])
    if entry_path.read_bytes() != entry_before:
        for path in (cert_next, key_next):
            path.unlink()
        raise CommandError(f"{ENTRY_FILE} changed meanwhile; nothing was written: run it again")
    replace_file(entry_path, published.to_file())
    expires = x509.load_der_x509_certificate(cert_der(identity.cert_pem)).not_valid_after_utc
    click.echo(f"next TLS certificate {pin}, valid until {expires:%Y-%m-%d}: {cert_next}")
    click.echo(
        "note: gateways of a Comity version from before 'comity keys rotate-tls' refuse a directory that lists a next "
        "certificate: every counterpart must run a later version before the directory operator publishes it"
    )
    click.echo(
        f"next: send {ENTRY_FILE} to the directory operator ('comity directory add DRAFT {ENTRY_FILE} --replace', "
        "then sign); once every counterpart has installed that directory, stop the gateway, run 'comity keys "
        "rotate-tls --activate' and start it"
    )


def _activate_tls(settings: Settings) -> None:
    _, _, held = _unseal_file(settings.keys_path)
    cert_next, key_next = _next_paths(settings)
    try:
        next_pem, next_key = cert_next.read_bytes(), key_next.read_bytes()
    except FileNotFoundError as exc:
        raise CommandError(
            f"no rollover is prepared ({exc.filename} is missing): run 'comity keys rotate-tls' first"
        ) from None
    pin = certificate_pin(next_pem)
    directory = read_directory(settings, now=datetime.now(UTC))
    own = directory.get(settings.authority_id)
    if own is None or pin not in own.tls_pins:
        raise CommandError(
            f"the installed directory (serial {directory.serial}) does not pin the next certificate {pin} for "
            f"{settings.authority_id}: peers holding it would refuse every connection. Publish {ENTRY_FILE} in a "
            "new directory, install it here and at every counterpart, then activate; nothing was written"
        )
    entry_path, _, entry = _entry(settings, "the certificate")
    published = _with_tls(entry, tls_cert=_b64(next_pem), tls_pin=pin, tls_next_cert=None, tls_next_pin=None)
    # under the current TLS password: a signing rotation since the rollover was prepared changed it
    key_after = reencrypt_key_pem(next_key, tls_key_passwords(held), tls_key_password(held))
    old_pin = certificate_pin(settings.tls_cert_path.read_bytes())
    # a crash between these writes leaves the .next files: running this again writes them all once more
    replace_file(settings.tls_key_path, key_after, private=True)
    replace_file(settings.tls_cert_path, next_pem)
    replace_file(entry_path, published.to_file())
    for path in (cert_next, key_next):
        path.unlink()
    click.echo(f"TLS certificate {pin} in place of {old_pin}")
    click.echo(
        f"next: start the gateway; send {ENTRY_FILE} to the directory operator, whose next directory publishes the "
        "new certificate alone"
    )
