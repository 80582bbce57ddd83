"""``comity init`` and ``comity directory``: the operator workflow end to end, and its refusals."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from joserfc.jwk import OKPKey

from config.directory import load_directory_draft, verify_directory
from config.settings import load_settings
from crypto.keys import AuthorityKeys, key_id, tls_key_password, unseal_keys
from crypto.tls import cert_der, certificate_pin, generate_tls_identity
from gateway.cli import main

PASSPHRASE = "correct horse battery staple"
DIRECTORY_PASSPHRASE = "directory operator passphrase"
ENV: dict[str, str | None] = {"COMITY_PASSPHRASE": PASSPHRASE, "COMITY_DIRECTORY_PASSPHRASE": DIRECTORY_PASSPHRASE}


def run(*args: str | Path, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(main, [str(arg) for arg in args], env=ENV if env is None else env, input=input)


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def fails(*args: str | Path, env: dict[str, str | None] | None = None) -> str:
    """Run a command that must fail: exit code 1, one line on stderr, no traceback. Returns that line."""
    result = run(*args, env=env)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception escaping the command
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("comity: ")
    assert "Traceback" not in result.output
    return lines[0]


def init(data_dir: Path, authority_id: str, country: str, port: int, *extra: str) -> Result:
    return ok(
        "init", "--id", authority_id, "--name", f"Central authority of {country}", "--country", country,
        "--endpoint", f"https://127.0.0.1:{port}", "--data-dir", data_dir, "--kdf-fast", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two authorities initialised, a directory key, a signed directory with both."""
    root = tmp_path_factory.mktemp("cli")
    init(root / "ar", "ar.mj", "AR", 8443, "--language", "es", "--role", "asset-recovery-focal-point",
         "--role", "mla-central-authority", "--caveat", "uncac-46-20", "--api-port", "8080")  # fmt: skip
    init(root / "es", "es.mj", "ES", 9443, "--language", "es", "--max-level", "CONFIDENTIAL")
    ok("directory", "keygen", "--out", root / "dirkey.sealed", "--kdf-fast")
    ok("directory", "new", "--out", root / "draft.json", "--expires-in-days", "30")
    ok("directory", "add", root / "draft.json", root / "ar" / "entry.json")
    ok("directory", "add", root / "draft.json", root / "es" / "entry.json")
    ok("directory", "sign", root / "draft.json", "--key", root / "dirkey.sealed", "--out", root / "directory.jws")
    return root


def test_init_writes_settings_that_load_back(workspace: Path) -> None:
    settings = load_settings(workspace / "ar" / "comity.toml")
    assert settings.authority_id == "ar.mj"
    assert settings.data_dir == workspace / "ar"
    assert (settings.api_port, settings.federation_port, settings.dev_plain_http) == (8080, 8443, False)
    assert load_settings(workspace / "es" / "comity.toml").federation_port == 9443  # from the endpoint
    assert settings.keys_path.is_file()
    assert settings.tls_cert_path.is_file()
    assert settings.tls_key_path.is_file()


def test_init_entry_is_public_and_matches_the_keys(workspace: Path) -> None:
    entry = json.loads((workspace / "ar" / "entry.json").read_text())
    assert entry["roles"] == ["asset-recovery-focal-point", "mla-central-authority"]
    assert entry["languages"] == ["es"]
    assert entry["accreditation"] == {"max_level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    keys = AuthorityKeys.unseal((workspace / "ar" / "keys.sealed").read_bytes(), PASSPHRASE.encode())
    assert [k["jwk"]["kid"] for k in entry["keys"]] == [keys.signing.kid, keys.encryption.kid]
    assert key_id(keys.archive) not in json.dumps(entry)
    assert all("d" not in k["jwk"] for k in entry["keys"])


def raw_private_bytes(keys: list[OKPKey]) -> list[bytes]:
    raws = []
    for key in keys:
        private = key.private_key
        assert isinstance(private, Ed25519PrivateKey | X25519PrivateKey)
        raws.append(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return raws


def encodings(raw: bytes) -> list[bytes]:
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def test_private_files_hold_no_raw_key_bytes_and_are_mode_0600(workspace: Path) -> None:
    sealed = (workspace / "ar" / "keys.sealed").read_bytes()
    keys = AuthorityKeys.unseal(sealed, PASSPHRASE.encode())
    for raw in raw_private_bytes([keys.signing, keys.encryption, keys.archive]):
        assert not any(form in sealed for form in encodings(raw))

    tls_key_pem = (workspace / "ar" / "tls" / "key.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in tls_key_pem
    with pytest.raises(TypeError):
        load_pem_private_key(tls_key_pem, password=None)
    # the TLS key opens with the password derived from the sealed keys, not with the passphrase itself
    with pytest.raises(ValueError, match="Incorrect password"):
        load_pem_private_key(tls_key_pem, password=PASSPHRASE.encode())
    tls_key = load_pem_private_key(tls_key_pem, password=tls_key_password(keys))
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    scalar = tls_key.private_numbers().private_value.to_bytes(32, "big")
    body = base64.b64decode(b"".join(line for line in tls_key_pem.splitlines() if not line.startswith(b"-----")))
    assert not any(form in tls_key_pem or form in body for form in encodings(scalar))

    directory_key_file = (workspace / "dirkey.sealed").read_bytes()
    directory_key = unseal_keys(directory_key_file, DIRECTORY_PASSPHRASE.encode())["directory"]
    assert not any(form in directory_key_file for form in encodings(raw_private_bytes([directory_key])[0]))

    for path in (workspace / "ar" / "keys.sealed", workspace / "ar" / "tls" / "key.pem", workspace / "dirkey.sealed"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    public = json.loads((workspace / "dirkey.sealed.pub.jwk").read_text())
    assert set(public) == {"kty", "crv", "x", "kid", "use", "alg"}


def test_verify_ok(workspace: Path) -> None:
    result = ok("directory", "verify", workspace / "directory.jws", "--key", workspace / "dirkey.sealed.pub.jwk")
    assert result.output.startswith("directory serial 1, issued ")
    assert "2 authorities" in result.output
    assert "ar.mj  AR  Central authority of AR  https://127.0.0.1:8443" in result.output
    assert "es.mj  ES" in result.output
    assert "accredited to CONFIDENTIAL" in result.output


def test_show_prints_the_verified_json(workspace: Path) -> None:
    result = ok("directory", "show", workspace / "directory.jws", "--key", workspace / "dirkey.sealed.pub.jwk")
    document = json.loads(result.output)
    assert [a["id"] for a in document["authorities"]] == ["ar.mj", "es.mj"]
    assert document["serial"] == 1


def test_verify_with_the_wrong_pinned_key_fails(workspace: Path, tmp_path: Path) -> None:
    run("directory", "keygen", "--out", tmp_path / "other.sealed", "--kdf-fast")
    line = fails("directory", "verify", workspace / "directory.jws", "--key", tmp_path / "other.sealed.pub.jwk")
    assert "not the pinned directory key" in line


def test_verify_refuses_a_rollback_and_plain_json(workspace: Path) -> None:
    key = workspace / "dirkey.sealed.pub.jwk"
    line = fails("directory", "verify", workspace / "directory.jws", "--key", key, "--min-serial", "4")
    assert line == "comity: directory serial 1 is lower than 4 already seen; install the current signed directory"
    line = fails("directory", "verify", workspace / "draft.json", "--key", key)
    assert "not a signed JWS" in line


def test_extend_gives_serial_2(workspace: Path, tmp_path: Path) -> None:
    key = workspace / "dirkey.sealed.pub.jwk"
    draft = tmp_path / "next.json"
    ok("directory", "new", "--out", draft, "--from", workspace / "directory.jws", "--key", key)
    extended = load_directory_draft(draft.read_bytes())
    assert extended.serial == 2
    assert [a.id for a in extended.authorities] == ["ar.mj", "es.mj"]
    # replacing an entry needs --replace
    line = fails("directory", "add", draft, workspace / "es" / "entry.json")
    assert "es.mj is already in the directory; use --replace" in line
    assert "replaced es.mj" in ok("directory", "add", draft, workspace / "es" / "entry.json", "--replace").output
    signed = tmp_path / "directory.jws"
    ok("directory", "sign", draft, "--key", workspace / "dirkey.sealed", "--out", signed)
    result = ok("directory", "verify", signed, "--key", key, "--min-serial", "1")
    assert result.output.startswith("directory serial 2,")


def test_init_into_an_existing_directory_is_refused(workspace: Path) -> None:
    before = (workspace / "ar" / "keys.sealed").read_bytes()
    line = fails(
        "init", "--id", "ar.mj", "--name", "Again", "--country", "AR", "--endpoint", "https://127.0.0.1:8443",
        "--data-dir", workspace / "ar", "--kdf-fast",
    )  # fmt: skip
    assert "already holds an authority (keys.sealed" in line
    assert (workspace / "ar" / "keys.sealed").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "AR.MJ", "--country", "AR"], "authority_id: authority id must look like 'ar.mj'"),
        (["--id", "ar.mj", "--country", "ES"], "country must be 'AR', the prefix of the authority id"),
        (["--id", "ar.mj", "--country", "AR", "--language", "Spanish"], "BCP 47"),
    ],
)
def test_init_refusals_leave_nothing_behind(tmp_path: Path, args: list[str], message: str) -> None:
    target = tmp_path / "new"
    line = fails(
        "init", "--name", "X", "--endpoint", "https://127.0.0.1:8443", "--data-dir", target, "--kdf-fast", *args
    )
    assert message in line
    assert not target.exists()


def test_init_refuses_a_bad_entry_before_asking_for_the_passphrase(tmp_path: Path) -> None:
    args = ["init", "--id", "ar.mj", "--name", "X", "--country", "ES", "--endpoint", "https://127.0.0.1",
            "--data-dir", str(tmp_path / "ar")]  # fmt: skip
    result = run(*args, env={"COMITY_PASSPHRASE": None}, input="")
    assert result.exit_code == 1
    assert "Passphrase" not in result.output + result.stderr
    assert result.stderr.strip() == "comity: AuthorityEntry: country must be 'AR', the prefix of the authority id"


def test_init_with_a_prompted_passphrase(tmp_path: Path) -> None:
    args = ["init", "--id", "uy.mec", "--name", "MEC", "--country", "UY", "--endpoint", "https://gw.mec.example.uy",
            "--data-dir", str(tmp_path / "uy"), "--kdf-fast", "--host", "gw.mec.example.uy",
            "--host", "192.0.2.7"]  # fmt: skip
    result = run(*args, env={"COMITY_PASSPHRASE": None}, input="typed passphrase\ntyped passphrase\n")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "typed passphrase" not in result.output
    AuthorityKeys.unseal((tmp_path / "uy" / "keys.sealed").read_bytes(), b"typed passphrase")
    assert load_settings(tmp_path / "uy" / "comity.toml").federation_port == 8443


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    line = fails("directory", "keygen", "--out", tmp_path / "k", env={"COMITY_DIRECTORY_PASSPHRASE": ""})
    assert "passphrase must not be empty" in line
    assert not (tmp_path / "k").exists()


def test_sign_with_the_wrong_passphrase(workspace: Path, tmp_path: Path) -> None:
    env = {**ENV, "COMITY_DIRECTORY_PASSPHRASE": "wrong"}
    line = fails(
        "directory", "sign", workspace / "draft.json", "--key", workspace / "dirkey.sealed", "--out",
        tmp_path / "d.jws", env=env,
    )  # fmt: skip
    assert line == "comity: wrong passphrase or corrupt key file"
    assert not (tmp_path / "d.jws").exists()


def test_sign_with_an_authority_key_file_is_refused(workspace: Path, tmp_path: Path) -> None:
    env = {**ENV, "COMITY_DIRECTORY_PASSPHRASE": PASSPHRASE}
    line = fails(
        "directory", "sign", workspace / "draft.json", "--key", workspace / "ar" / "keys.sealed", "--out",
        tmp_path / "d.jws", env=env,
    )  # fmt: skip
    assert "is not a directory key file" in line


def test_add_an_invalid_entry(workspace: Path, tmp_path: Path) -> None:
    entry = json.loads((workspace / "ar" / "entry.json").read_text())
    entry["tls_pin"] = "sha256:" + "0" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entry))
    draft = tmp_path / "draft.json"
    ok("directory", "new", "--out", draft)
    assert "tls_pin does not match tls_cert" in fails("directory", "add", draft, bad)
    assert load_directory_draft(draft.read_bytes()).authorities == []


def test_new_refuses_to_overwrite_and_needs_both_from_and_key(workspace: Path) -> None:
    assert "already exists" in fails("directory", "new", "--out", workspace / "draft.json")
    line = fails("directory", "new", "--out", workspace / "x.json", "--from", workspace / "directory.jws")
    assert "--from and --key go together" in line


def test_signed_directory_verifies_in_the_library(workspace: Path) -> None:
    from datetime import UTC, datetime

    from config.directory import load_directory_key

    pinned = load_directory_key((workspace / "dirkey.sealed.pub.jwk").read_bytes())
    signed = verify_directory((workspace / "directory.jws").read_bytes(), pinned, now=datetime.now(UTC))
    assert signed.authority("es.mj").accreditation.max_level == "CONFIDENTIAL"
    assert os.path.getsize(workspace / "directory.jws") > 0


def test_sign_refuses_to_overwrite_its_key_or_draft(workspace: Path, tmp_path: Path) -> None:
    key, draft = tmp_path / "dirkey.sealed", tmp_path / "draft.json"
    key.write_bytes((workspace / "dirkey.sealed").read_bytes())
    draft.write_bytes((workspace / "draft.json").read_bytes())
    for out, what in ((key, "--key"), (draft, "DRAFT")):
        before = out.read_bytes()
        for extra in ([], ["--replace"]):
            line = fails("directory", "sign", draft, "--key", key, "--out", out, *extra)
            assert line == f"comity: --out {out} is the same file as {what}; choose another --out"
            assert out.read_bytes() == before
    assert (
        "signed directory serial 1" in ok("directory", "sign", draft, "--key", key, "--out", tmp_path / "d.jws").output
    )


def test_sign_replaces_only_with_replace_and_a_higher_serial(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "directory.jws"
    out.write_text("an operator's notes\n")
    args = ("directory", "sign", workspace / "draft.json", "--key", workspace / "dirkey.sealed", "--out", out)
    line = fails(*args)
    assert line == f"comity: {out} already exists; give --replace to replace it with the signed directory"
    assert out.read_text() == "an operator's notes\n"
    ok(*args, "--replace")  # not a signed directory: replaced as asked
    published = out.read_bytes()
    line = fails(*args, "--replace")  # the same serial again, with other contents (issued_at at least)
    assert "is a signed directory of serial 1, not lower than the draft's 1" in line
    assert out.read_bytes() == published
    draft = tmp_path / "next.json"
    ok("directory", "new", "--out", draft, "--from", out, "--key", workspace / "dirkey.sealed.pub.jwk")
    ok("directory", "sign", draft, "--key", workspace / "dirkey.sealed", "--out", out, "--replace")
    assert ok("directory", "verify", out, "--key", workspace / "dirkey.sealed.pub.jwk").output.startswith(
        "directory serial 2,"
    )
    line = fails(*args, "--replace")  # a lower serial over a higher one
    assert "serial 2, not lower than the draft's 1" in line


def test_init_normalises_max_level_and_refuses_one_outside_the_scheme(tmp_path: Path) -> None:
    init(tmp_path / "ar", "ar.mj", "AR", 8443, "--max-level", "strictly-confidential")
    entry = json.loads((tmp_path / "ar" / "entry.json").read_text())
    assert entry["accreditation"]["max_level"] == "STRICTLY CONFIDENTIAL"
    for option, value, message in (
        ("--max-level", "TOP SECRET", "unknown marking level 'TOP SECRET'; known levels: UNCLASSIFIED, CONFIDENTIAL"),
        ("--caveat", "noforn", "unknown caveat 'noforn'; known caveats: uncac-46-20"),
    ):
        target = tmp_path / "refused"
        line = fails(
            "init", "--id", "es.mj", "--name", "X", "--country", "ES", "--endpoint", "https://127.0.0.1:9443",
            "--data-dir", target, "--kdf-fast", option, value,
        )  # fmt: skip
        assert message in line
        assert not target.exists()


def test_add_refuses_an_entry_accredited_outside_the_scheme(workspace: Path, tmp_path: Path) -> None:
    entry = json.loads((workspace / "ar" / "entry.json").read_text())
    entry["accreditation"]["max_level"] = "STRICTLY-CONFIDENTIAL"
    edited = tmp_path / "entry.json"
    edited.write_text(json.dumps(entry))
    draft = tmp_path / "draft.json"
    ok("directory", "new", "--out", draft)
    before = draft.read_bytes()
    line = fails("directory", "add", draft, edited)
    assert "accreditation.max_level: unknown marking level 'STRICTLY-CONFIDENTIAL'" in line
    assert draft.read_bytes() == before


def test_init_that_cannot_make_the_attachments_dir_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    args = ("init", "--id", "ar.mj", "--name", "X", "--country", "AR", "--endpoint", "https://127.0.0.1:8443",
            "--data-dir", tmp_path / "ar", "--kdf-fast")  # fmt: skip
    line = fails(*args, env={**ENV, "COMITY_ATTACHMENTS_DIR": str(blocker / "attachments")})
    assert line == f"comity: {blocker / 'attachments'}: Not a directory"
    assert [p.name for p in (tmp_path / "ar").rglob("*") if p.is_file()] == []
    ok(*args)  # the retry, once the cause is fixed, is not refused
    assert (tmp_path / "ar" / "attachments").is_dir()


def test_init_refuses_a_name_that_would_print_as_two_lines(tmp_path: Path) -> None:
    target = tmp_path / "ar"
    line = fails(
        "init", "--id", "ar.mj", "--name", "Ministerio\n  zz.fake  ZZ  Fake", "--country", "AR",
        "--endpoint", "https://127.0.0.1:8443", "--data-dir", target, "--kdf-fast",
    )  # fmt: skip
    assert line == "comity: AuthorityEntry: name: must not contain control characters or line breaks"
    assert not target.exists()


def test_sign_refuses_a_tls_certificate_that_expires_before_the_directory(workspace: Path, tmp_path: Path) -> None:
    # es.mj's certificate replaced by one valid for 10 days, in a draft that expires in 30
    entry = json.loads((workspace / "es" / "entry.json").read_bytes())
    short = generate_tls_identity("es.mj", ["127.0.0.1"], None, valid_days=10)
    entry |= {
        "tls_cert": base64.b64encode(cert_der(short.cert_pem)).decode(),
        "tls_pin": certificate_pin(short.cert_pem),
    }
    (tmp_path / "es-entry.json").write_text(json.dumps(entry))
    draft, signed = tmp_path / "draft.json", tmp_path / "directory.jws"
    ok("directory", "new", "--out", draft, "--expires-in-days", "30")
    ok("directory", "add", draft, workspace / "ar" / "entry.json")
    ok("directory", "add", draft, tmp_path / "es-entry.json")
    line = fails("directory", "sign", draft, "--key", workspace / "dirkey.sealed", "--out", signed)
    assert "the TLS certificate of es.mj expires at " in line and "before the directory" in line
    assert "comity keys rotate-tls" in line and "--allow-expiring-tls" in line
    assert not signed.exists()

    # signed when the operator says so, with a warning; verify repeats the warning
    result = ok(
        "directory", "sign", draft, "--key", workspace / "dirkey.sealed", "--out", signed, "--allow-expiring-tls"
    )
    assert result.stderr.startswith("warning: the TLS certificate of es.mj expires at ")
    result = ok("directory", "verify", signed, "--key", workspace / "dirkey.sealed.pub.jwk")
    assert "warning: the TLS certificate of es.mj" in result.stderr and "ar.mj" not in result.stderr
    # a draft that expires before the certificate signs without a word
    ok("directory", "new", "--out", tmp_path / "short.json", "--expires-in-days", "5")
    ok("directory", "add", tmp_path / "short.json", tmp_path / "es-entry.json")
    result = ok(
        "directory", "sign", tmp_path / "short.json", "--key", workspace / "dirkey.sealed", "--out", tmp_path / "s.jws"
    )
    assert result.stderr == ""


def test_sign_notes_an_entry_in_a_tls_rollover(workspace: Path, tmp_path: Path) -> None:
    entry = json.loads((workspace / "es" / "entry.json").read_bytes())
    later = generate_tls_identity("es.mj", ["127.0.0.1"], None)
    entry |= {"tls_next_cert": base64.b64encode(cert_der(later.cert_pem)).decode()}
    entry["tls_next_pin"] = certificate_pin(later.cert_pem)
    (tmp_path / "es-entry.json").write_text(json.dumps(entry))
    draft = tmp_path / "draft.json"
    ok("directory", "new", "--out", draft, "--expires-in-days", "30")
    ok("directory", "add", draft, workspace / "ar" / "entry.json")
    ok("directory", "add", draft, tmp_path / "es-entry.json")
    result = ok("directory", "sign", draft, "--key", workspace / "dirkey.sealed", "--out", tmp_path / "d.jws")
    (note,) = result.stderr.splitlines()
    assert note.startswith("note: es.mj is in a TLS certificate rollover") and "every counterpart" in note
