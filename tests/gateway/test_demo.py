"""``make demo`` runs end to end: the README's first command is tested like code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main


def test_demo_runs_the_whole_scenario(tmp_path: Path) -> None:
    comity = Path(sys.executable).parent / "comity"
    result = subprocess.run(
        [str(comity), "demo", "--workdir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    for step in (
        "1. Creating two central authorities",
        "2. Starting both gateways on 127.0.0.1 (federation over mutual TLS",
        "3. alice (ar.mj) drafts and sends an MLA request with a 5 MB attachment",
        "4. au.ag verified it and answered with a signed receipt",
        "SHA-256 matches: True",
        "5. supervisor sam (au.ag) assigns the new case to bruce",
        "ar.mj records the signed acknowledgement",
        "6. alice (ar.mj) opens the response",
        "7. An auditor verifies both ledgers",
        "stopped cleanly",
        "9. The acknowledgement timeline",
    ):
        assert step in out, step
    assert out.count("verified in") == 2  # comity audit verify passed on both gateways
    for milestone in ("submitted", "sent", "received", "receipted", "acknowledged", "answered"):
        assert milestone in out.split("9. The acknowledgement timeline")[1]


def test_demo_ignores_the_operators_settings_in_the_environment(tmp_path: Path) -> None:
    """The demo read the operator's COMITY_* variables: with COMITY_DATABASE_URL set (as the compose file sets it in
    every gateway container) it created its users, ledger entries and directory record in that database, and the
    real gateway then refused to start; a passphrase file or a port stopped it. It now sets them all aside."""
    import os

    operators = tmp_path / "operators.db"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("the operator's passphrase")
    env = {
        **os.environ,
        "COMITY_DATABASE_URL": f"sqlite+aiosqlite:///{operators}",
        "COMITY_PASSPHRASE_FILE": str(passphrase),
        "COMITY_API_PORT": "18080",
    }
    comity = Path(sys.executable).parent / "comity"
    result = subprocess.run(
        [str(comity), "demo", "--workdir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Demo finished" in result.stdout and not operators.exists()


def _no_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.demo

    async def nothing(workdir: Path, say: object) -> None:
        return None

    monkeypatch.setattr(gateway.demo, "_run", nothing)
    # the demo sets the process's logging to warnings: the tests after this one read info lines
    monkeypatch.setattr(gateway.demo, "configure_logging", lambda level: None)


def test_demo_refuses_a_workdir_it_did_not_make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scenario(monkeypatch)
    victim = tmp_path / "srv-comity"
    (victim / "tls").mkdir(parents=True)
    (victim / "keys.sealed").write_text("an authority's keys")
    result = CliRunner().invoke(main, ["demo", "--workdir", str(victim)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"comity: {victim} exists and was not made by the demo; remove it or choose another --workdir"
    )
    assert (victim / "keys.sealed").read_text() == "an authority's keys"
    assert (victim / "tls").is_dir()
    file = tmp_path / "a-file"
    file.write_text("kept")
    assert CliRunner().invoke(main, ["demo", "--workdir", str(file)]).exit_code != 0
    assert file.read_text() == "kept"


def test_demo_replaces_its_own_workdir_run_after_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scenario(monkeypatch)
    workdir = tmp_path / "demo"
    for _ in range(2):
        result = CliRunner().invoke(main, ["demo", "--workdir", str(workdir)])
        assert result.exit_code == 0, result.output
        assert (workdir / ".comity-demo").is_file()
        (workdir / "left-by-the-scenario").write_text("x")
    assert CliRunner().invoke(main, ["demo", "--workdir", str(workdir)]).exit_code == 0
    assert sorted(p.name for p in workdir.iterdir()) == [".comity-demo"]
