"""A gateway refuses to start with a bad key passphrase, an unmigrated database, or an expired, badly signed or
rolled-back directory, and the message names what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import func, select

from config.errors import ConfigError, DirectoryBadSignature, DirectoryExpired, DirectoryRolledBack
from config.settings import load_settings
from crypto.errors import KeyStoreError
from crypto.keys import DEFAULT_KDF, AuthorityKeys
from gateway.cli.common import FAST_KDF
from gateway.context import Gateway
from gateway.provision import Provisioned, comity, provision
from store.tables import ledger_entries, settings_state
from tests.conftest import DatabaseFactory
from tests.gateway.conftest import AR, AU, PASSPHRASE


@pytest.fixture
async def provisioned(databases: DatabaseFactory, tmp_path: Path) -> list[Provisioned]:
    urls = [await databases.new("ar"), await databases.new("au")]
    return await asyncio.to_thread(provision, tmp_path, [AR, AU], passphrase=PASSPHRASE, database_urls=urls)


async def load(side: Provisioned, passphrase: str = PASSPHRASE, **kwargs: object) -> Gateway:
    return await Gateway.load(load_settings(side.config), passphrase.encode(), **kwargs)  # type: ignore[arg-type]


async def test_starts_and_records_the_directory_serial(provisioned: list[Provisioned]) -> None:
    gw = await load(provisioned[0])
    await gw.close()


async def test_wrong_passphrase(provisioned: list[Provisioned]) -> None:
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        await load(provisioned[0], "not the passphrase")


async def test_keys_sealed_with_weak_kdf_parameters_are_logged_at_start(provisioned: list[Provisioned]) -> None:
    """`comity init --kdf-fast` (tests, the demo) seals keys.sealed with cheap argon2id parameters, which the gateway
    opens like any other: it says so at start, naming the parameters and nothing secret; resealed under DEFAULT_KDF,
    it says nothing."""
    side = provisioned[0]
    with structlog.testing.capture_logs() as logged:
        gw = await load(side)
    await gw.close()
    weak = [line for line in logged if line["event"] == "keys_sealed_with_weak_kdf"]
    assert weak == [
        {
            "event": "keys_sealed_with_weak_kdf",
            "log_level": "warning",
            "time_cost": FAST_KDF.time_cost,
            "memory_kib": FAST_KDF.memory_kib,
            "parallelism": FAST_KDF.parallelism,
            "expected_time_cost": DEFAULT_KDF.time_cost,
            "expected_memory_kib": DEFAULT_KDF.memory_kib,
        }
    ]

    keys_path = load_settings(side.config).keys_path
    keys = AuthorityKeys.unseal(keys_path.read_bytes(), PASSPHRASE.encode())
    keys_path.write_bytes(keys.seal(PASSPHRASE.encode(), DEFAULT_KDF))
    with structlog.testing.capture_logs() as logged:
        gw = await load(side)
    await gw.close()
    assert not [line for line in logged if line["event"] == "keys_sealed_with_weak_kdf"]


async def test_expired_directory(provisioned: list[Provisioned]) -> None:
    later = datetime.now(UTC) + timedelta(days=365)
    with pytest.raises(DirectoryExpired, match="expired"):
        await load(provisioned[0], clock=lambda: later)


async def test_badly_signed_directory(provisioned: list[Provisioned]) -> None:
    path = provisioned[0].data_dir / "directory.jws"
    header, payload, signature = path.read_text().strip().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    path.write_text(f"{header}.{payload}.{flipped}")
    with pytest.raises(DirectoryBadSignature):
        await load(provisioned[0])


def _reissue(workdir: Path) -> Path:
    """The directory operator extends the signed directory: serial + 1."""
    operator = workdir / "directory-operator"
    draft, signed = operator / "draft2.json", operator / "directory2.jws"
    os.environ["COMITY_DIRECTORY_PASSPHRASE"] = PASSPHRASE
    try:
        comity(
            "directory",
            "new",
            "--out",
            str(draft),
            "--from",
            str(operator / "directory.jws"),
            "--key",
            str(operator / "directory-key.sealed.pub.jwk"),
        )
        comity("directory", "sign", str(draft), "--key", str(operator / "directory-key.sealed"), "--out", str(signed))
    finally:
        del os.environ["COMITY_DIRECTORY_PASSPHRASE"]
    return signed


async def test_rolled_back_directory(provisioned: list[Provisioned], tmp_path: Path) -> None:
    side = provisioned[0]
    first = side.data_dir / "directory.jws"
    original = first.read_bytes()
    shutil.copyfile(await asyncio.to_thread(_reissue, tmp_path), first)
    gw = await load(side)
    assert gw.directory.serial == 2
    await gw.close()
    first.write_bytes(original)  # someone reinstalls the older directory
    with pytest.raises(DirectoryRolledBack, match="serial 1 is lower than 2"):
        await load(side)


async def test_unmigrated_database(tmp_path: Path) -> None:
    (side,) = await asyncio.to_thread(provision, tmp_path / "p", [AR], passphrase=PASSPHRASE)
    settings = load_settings(side.config, database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match="comity db upgrade"):
        await Gateway.load(settings, PASSPHRASE.encode())


async def test_a_replica_that_installed_a_directory_meanwhile_is_not_rolled_back(
    provisioned: list[Provisioned], tmp_path: Path
) -> None:
    """Replicas share the database and read the installed serial at start, then install their own directory file:
    the install reads the serial again in its transaction. A newer serial installed meanwhile by another replica
    is not set back (this replica refuses to start); the same serial is not recorded twice."""
    side = provisioned[0]
    gw = await load(side)  # serial 1, installed at provisioning
    try:
        serial = settings_state.c.key == "directory_serial"
        async with gw.engine.begin() as conn:
            await conn.execute(settings_state.update().where(serial).values(value="7"))
        with pytest.raises(DirectoryRolledBack, match="lower than 7, which another replica installed meanwhile"):
            await gw._install_directory()
        async with gw.engine.begin() as conn:
            assert (await conn.execute(select(settings_state.c.value).where(serial))).scalar_one() == "7"
            await conn.execute(settings_state.update().where(serial).values(value="1"))
        installs = (
            select(func.count()).select_from(ledger_entries).where(ledger_entries.c.type == "directory.installed")
        )
        async with gw.engine.connect() as conn:
            before = (await conn.execute(installs)).scalar_one()
        await gw._install_directory()  # serial 1 again: another replica's record stands
        async with gw.engine.connect() as conn:
            assert (await conn.execute(installs)).scalar_one() == before
    finally:
        await gw.close()


async def test_a_directory_changed_under_the_same_serial_is_refused(provisioned: list[Provisioned]) -> None:
    """Decision 97: the operator corrected a draft (a compromised key dropped, say) and signed it again under the
    serial it had: gateways that installed the first document must not take the second as the same, nor the first
    again once they took the second. Only a new serial changes the directory."""
    side = provisioned[0]
    gw = await load(side)  # serial 1, installed at provisioning
    await gw.close()
    operator = side.data_dir.parent / "directory-operator"
    draft = json.loads((operator / "draft.json").read_text())
    draft["authorities"][0]["notes"] = "corrected"
    (operator / "draft-again.json").write_text(json.dumps(draft))
    os.environ["COMITY_DIRECTORY_PASSPHRASE"] = PASSPHRASE
    try:
        again = operator / "directory-again.jws"
        comity("directory", "sign", str(operator / "draft-again.json"), "--key", str(operator / "directory-key.sealed"),
               "--out", str(again))  # fmt: skip
    finally:
        del os.environ["COMITY_DIRECTORY_PASSPHRASE"]
    installed = side.data_dir / "directory.jws"
    original = installed.read_bytes()
    shutil.copyfile(again, installed)
    with pytest.raises(DirectoryRolledBack, match="serial 1 differs from the directory installed under serial 1"):
        await load(side)
    installed.write_bytes(original)  # the document installed under serial 1 still starts
    gw = await load(side)
    assert gw.directory.serial == 1
    await gw.close()


async def test_a_replica_installing_a_serial_another_installed_meanwhile_checks_it_is_the_same_document(
    provisioned: list[Provisioned],
) -> None:
    """Decision 97 when two replicas start at once: this one read no installed serial, then another installed the
    same serial from another document before this one's install. The install sees the serial and must compare the
    documents; before, it returned, and the two replicas ran on two documents of one serial."""
    from gateway.context import DIRECTORY_DIGEST, DIRECTORY_SERIAL
    from store.facts import read_fact, write_fact

    gw = await load(provisioned[0])
    try:
        async with gw.engine.begin() as conn:  # the other replica's install, of another document under serial 1
            recorded = await read_fact(conn, DIRECTORY_DIGEST)
            await write_fact(conn, DIRECTORY_SERIAL, 1)
            await write_fact(conn, DIRECTORY_DIGEST, {"serial": 1, "sha256": "f" * 64})
        with pytest.raises(DirectoryRolledBack, match="serial 1 differs from the directory installed under serial 1"):
            await gw._install_directory()
        async with gw.engine.begin() as conn:  # the same document: its record stands, nothing more is installed
            await write_fact(conn, DIRECTORY_DIGEST, recorded)
        entries = select(func.count()).select_from(ledger_entries)
        async with gw.engine.connect() as conn:
            count = (await conn.execute(entries)).scalar_one()
        await gw._install_directory()
        async with gw.engine.connect() as conn:
            assert (await conn.execute(entries)).scalar_one() == count
    finally:
        await gw.close()


async def test_a_tls_certificate_peers_would_refuse_is_not_served(provisioned: list[Provisioned]) -> None:
    """A certificate that the gateway's own directory entry does not pin (a restored backup, a copied data
    directory), or that is outside its validity (every certificate `comity init` makes expires within 825 days),
    fails every handshake with every peer. Before, the gateway started and reported ready, and deliveries were
    retried forever as ClientOSError; now it refuses to serve, naming the certificate and what is wrong, and warns a
    month before the certificate expires."""
    from cryptography import x509

    from crypto.tls import cert_der, generate_tls_identity
    from gateway.app import start_gateway
    from gateway.tls import EXPIRY_WARNING, check_own_certificate

    side = provisioned[0]
    gw = await load(side)
    cert_file = gw.settings.tls_cert_path
    published = cert_file.read_bytes()
    cert = x509.load_der_x509_certificate(cert_der(published))
    try:
        with structlog.testing.capture_logs() as logged:
            check_own_certificate(gw.directory, "ar.mj", cert_file, gw.clock())  # the published one, in date
            assert logged == []
            check_own_certificate(gw.directory, "ar.mj", cert_file, cert.not_valid_after_utc - EXPIRY_WARNING / 2)
        assert [entry["event"] for entry in logged] == ["tls_certificate_expiring"]
        for moment, said in (
            (cert.not_valid_after_utc + timedelta(seconds=1), "expired on"),
            (cert.not_valid_before_utc - timedelta(seconds=1), "is valid only from"),
        ):
            with pytest.raises(ConfigError, match=said):
                check_own_certificate(gw.directory, "ar.mj", cert_file, moment)
        cert_file.write_bytes(generate_tls_identity("ar.mj", ["127.0.0.1"], None).cert_pem)
        with pytest.raises(ConfigError, match=r"is not one directory serial 1 pins for ar\.mj"):
            await start_gateway(gw)
        cert_file.unlink()
        with pytest.raises(ConfigError, match="cannot be read"):
            await start_gateway(gw)
    finally:
        cert_file.write_bytes(published)
        await gw.close()
