"""``comity init``: create an authority's keys, TLS identity, settings and public directory entry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import click
from pydantic import ValidationError

from config.directory import ROLES, AuthorityEntry, directory_entry_for
from config.settings import PASSPHRASE_ENV, Settings, settings_toml
from crypto.keys import DEFAULT_KDF, AuthorityKeys, generate_authority_keys, key_id, tls_key_password
from crypto.tls import TlsIdentity, certificate_pin, generate_tls_identity
from gateway.cli.common import (
    FAST_KDF,
    CommandError,
    ensure_private_dir,
    read_passphrase,
    reports_errors,
    write_new_files,
)
from protocol.markings import MarkingScheme

__all__ = ["init"]

ENTRY_FILE = "entry.json"
SETTINGS_FILE = "comity.toml"


def _settings(
    authority_id: str, data_dir: Path, endpoint: str, api_port: int, federation_port: int | None
) -> tuple[Settings, dict[str, object]]:
    try:
        parts = urlsplit(endpoint)
        endpoint_port = parts.port
    except ValueError:
        raise CommandError(f"--endpoint {endpoint!r} is not a valid URL with a valid port") from None
    values: dict[str, object] = {
        "authority_id": authority_id,
        "data_dir": data_dir,
        "api_port": api_port,
        "federation_port": federation_port or endpoint_port or 8443,
        "dev_plain_http": parts.scheme == "http",
    }
    try:
        # COMITY_* variables of this shell apply, as they will when the gateway runs; only `values` are written
        return Settings.model_validate(values), values
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CommandError(f"{where}: {str(first['msg']).removeprefix('Value error, ')}") from None


@click.command()
@click.option("--id", "authority_id", required=True, help="Authority id, e.g. ar.mj (country code, dot, short name).")
@click.option("--name", required=True, help="Official name of the authority.")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, upper case; must match the id.")
@click.option(
    "--endpoint", required=True, help="Federation URL other gateways reach, e.g. https://gw.example.org:8443."
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for keys, settings and data; must not hold keys yet.",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    default=["mla-central-authority"],
    show_default=True,
    help="A role in the directory (repeatable).",
)
@click.option("--language", "languages", multiple=True, default=["en"], show_default=True, help="BCP 47 tag.")
@click.option(
    "--max-level",
    default="STRICTLY CONFIDENTIAL",
    show_default=True,
    help="Highest marking level accepted, of the marking scheme.",
)
@click.option("--caveat", "caveats", multiple=True, help="A caveat this authority honours (repeatable).")
@click.option("--api-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--federation-port", type=click.IntRange(1, 65535), default=None, help="Listening port [default: endpoint's port]."
)
@click.option("--host", "hosts", multiple=True, help="Host name or IP in the TLS certificate [default: endpoint's].")
@click.option("--kdf-fast", is_flag=True, hidden=True, help="Cheap argon2id parameters: tests and the benchmark only.")
@reports_errors
def init(
    authority_id: str,
    name: str,
    country: str,
    endpoint: str,
    data_dir: Path,
    roles: tuple[str, ...],
    languages: tuple[str, ...],
    max_level: str,
    caveats: tuple[str, ...],
    api_port: int,
    federation_port: int | None,
    hosts: tuple[str, ...],
    kdf_fast: bool,
) -> None:
    """Create keys, a TLS identity, comity.toml and the public entry.json for one authority.

    The passphrase comes from COMITY_PASSPHRASE or a prompt; it seals the private keys (argon2id), and the TLS key
    is encrypted under a password derived from those sealed keys.
    Send entry.json to the directory operator; install the signed directory.jws and directory-key.jwk they return.
    """
    data_dir = data_dir.expanduser().absolute()
    settings, values = _settings(authority_id, data_dir, endpoint, api_port, federation_port)
    targets = {
        "keys": settings.keys_path,
        "cert": settings.tls_cert_path,
        "tls_key": settings.tls_key_path,
        "settings": data_dir / SETTINGS_FILE,
        "entry": data_dir / ENTRY_FILE,
    }
    present = [path.relative_to(data_dir).as_posix() for path in targets.values() if path.exists()]
    if present:
        raise CommandError(
            f"{data_dir} already holds an authority ({', '.join(present)}); refusing to overwrite keys: "
            "choose another --data-dir"
        )
    tls_hosts = list(hosts) or [urlsplit(endpoint).hostname or ""]

    def build(keys: AuthorityKeys, tls: TlsIdentity) -> AuthorityEntry:
        return directory_entry_for(
            authority_id=authority_id,
            name=name,
            country=country,
            endpoint=endpoint,
            keys=keys,
            tls_cert_pem=tls.cert_pem,
            roles=roles,
            languages=languages,
            max_level=MarkingScheme().level_named(max_level),
            caveats=caveats,
            not_before=now,
        )

    # Validate the entry with throwaway keys before asking for the passphrase (cheap: no KDF, no key encryption),
    # then build everything in memory before writing, so that a refusal leaves nothing behind.
    now = datetime.now(UTC)
    build(generate_authority_keys(), generate_tls_identity(authority_id, tls_hosts, None, now=now))
    passphrase = read_passphrase(PASSPHRASE_ENV, confirm=True, new=True)
    keys = generate_authority_keys()
    sealed = keys.seal(passphrase, FAST_KDF if kdf_fast else DEFAULT_KDF)
    tls = generate_tls_identity(authority_id, tls_hosts, tls_key_password(keys), now=now)
    entry = build(keys, tls)
    header = (
        f"Comity settings for {authority_id}, written by 'comity init'. Every setting and its default:\n"
        "config/samples/comity.toml and docs/configuration.md. COMITY_* environment variables override this file."
    )

    ensure_private_dir(data_dir, tighten=True)
    ensure_private_dir(targets["tls_key"].parent)
    ensure_private_dir(targets["cert"].parent)
    ensure_private_dir(settings.attachments_path)  # before any file: a failure here must leave none behind
    # all or none: a failure part-way (a full disk, Ctrl-C) leaves nothing that would make a retry refuse
    write_new_files(
        [
            (targets["keys"], sealed, True),
            (targets["tls_key"], tls.key_pem, True),
            (targets["cert"], tls.cert_pem, False),
            # private: an operator adds database_url or notify_webhook_secret to it
            (targets["settings"], settings_toml(values, header=header).encode("utf-8"), True),
            (targets["entry"], entry.to_file(), False),
        ]
    )

    created = [
        (str(settings.keys_file), "signing, encryption and archive keys, sealed with the passphrase"),
        (str(settings.tls_cert_file), f"TLS certificate, pin {certificate_pin(tls.cert_pem)}"),
        (str(settings.tls_key_file), "TLS private key, encrypted with a password derived from the sealed keys"),
        (SETTINGS_FILE, "settings"),
        (ENTRY_FILE, "public directory entry: send it to the directory operator"),
    ]
    click.echo(f"initialised {authority_id} in {data_dir}")
    for file_name, what in created:
        click.echo(f"  {file_name:<14} {what}")
    click.echo(f"signing key     kid {key_id(keys.signing)}")
    click.echo(f"encryption key  kid {key_id(keys.encryption)}")
    click.echo(f"archive key     kid {key_id(keys.archive)} (never published)")
    click.echo(f"next: put directory.jws and {settings.directory_key_file} from the directory operator in {data_dir}")
