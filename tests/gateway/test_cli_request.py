"""``comity request template`` and ``comity request check``: every template round-trips through the checker."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from config.directory import directory_entry_for
from crypto.keys import generate_authority_keys
from crypto.tls import generate_tls_identity
from gateway.cli import main
from protocol.requests import Request, RequestType

NOW = datetime(2026, 11, 28, 7, 40, tzinfo=UTC)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def french_recipient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory entry of an authority that accepts French only and publishes a note."""
    entry = directory_entry_for(
        authority_id="fr.mj",
        name="Bureau de l'entraide pénale internationale",
        country="FR",
        endpoint="https://127.0.0.1:8443",
        keys=generate_authority_keys(),
        tls_cert_pem=generate_tls_identity("fr.mj", ["127.0.0.1"], None, now=NOW).cert_pem,
        roles=["mla-central-authority"],
        languages=["fr"],
        not_before=NOW - timedelta(days=1),
        notes="Joindre la décision de justice.",
    )
    path = tmp_path_factory.mktemp("recipient") / "entry.json"
    path.write_text(json.dumps(entry.to_json()), encoding="utf-8")
    return path


@pytest.mark.parametrize("request_type", [t.value for t in RequestType])
def test_the_example_passes_and_the_bare_template_fails_listing_the_blocking_elements(
    request_type: str, tmp_path: Path
) -> None:
    example = run("request", "template", request_type, "--example")
    assert example.exit_code == 0, example.output
    assert Request.parse(json.loads(example.stdout)).type.value == request_type
    passed = run("request", "check", write(tmp_path / "example.json", example.stdout))
    assert passed.exit_code == 0, passed.output
    assert "Complete: no blocking element missing" in passed.stdout

    bare = run("request", "template", request_type)
    assert bare.exit_code == 0
    failed = run("request", "check", write(tmp_path / "bare.json", bare.stdout))
    assert failed.exit_code == 1
    assert isinstance(failed.exception, SystemExit)
    assert "Traceback" not in failed.output
    summary = failed.stdout.splitlines()[-1]
    assert summary.startswith("Incomplete: ")
    assert "46(15)(a)" in summary
    assert "MISSING" in failed.stdout
    assert failed.stderr.splitlines() == [f"comity: bare.json is incomplete: missing {summary.rsplit(': ', 1)[1][:-1]}"]


def test_the_recipient_entry_applies_its_languages_and_notes(tmp_path: Path, french_recipient: Path) -> None:
    example = write(tmp_path / "r.json", run("request", "template", "mla-criminal", "--example").stdout)
    result = run("request", "check", example, "--recipient-entry", french_recipient)
    assert result.exit_code == 1
    assert "one of fr" in result.stdout
    assert "Joindre la décision de justice." in result.stdout
    assert result.stderr.strip() == "comity: r.json is incomplete: missing 46(14)"


def test_the_caveats_the_request_asks_for_are_checked_against_the_marking_given(tmp_path: Path) -> None:
    """The example asks for confidentiality (art. 46(20)): alone, a warning says which caveat its marking needs;
    ``--caveat`` names the marking's caveats (a parameter counts by the name), and a missing one blocks."""
    example = write(tmp_path / "r.json", run("request", "template", "freezing", "--example").stdout)
    alone = run("request", "check", example)
    assert alone.exit_code == 0, alone.output
    assert re.search(r"warning +marking .*\n.*-> mark it with the caveat uncac-46-20: ", alone.stdout), alone.stdout
    marked = run("request", "check", example, "--caveat", "uncac-46-20:until-2027-01-31", "--caveat", "no-onward")
    assert marked.exit_code == 0, marked.output
    assert re.search(r"present +marking ", marked.stdout), marked.stdout
    unmarked = run("request", "check", example, "--caveat", "no-onward")
    assert unmarked.exit_code == 1
    assert re.search(r"MISSING +marking ", unmarked.stdout), unmarked.stdout
    assert unmarked.stderr.strip() == "comity: r.json is incomplete: missing marking"


def test_a_malformed_request_is_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", json.dumps({"type": "mla-criminal", "language": "Spanish"}))
    result = run("request", "check", bad)
    assert result.exit_code == 1
    assert result.stderr.startswith("comity: Request: language: ")
    assert len(result.stderr.splitlines()) == 1
    duplicate = write(tmp_path / "dup.json", '{"type": "mla-criminal", "type": "extradition"}')
    assert run("request", "check", duplicate).stderr.startswith("comity: duplicate member 'type'")


def test_an_unknown_type_is_refused_with_the_list_of_types() -> None:
    result = run("request", "template", "letters-rogatory")
    assert result.exit_code == 2
    assert "service-of-documents" in result.output
