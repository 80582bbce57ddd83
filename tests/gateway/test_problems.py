"""Every error code has its HTTP status in one table, and docs/protocol.md section 12 lists the codes as they are.

A second implementation reads section 12 to know what a status and a code mean, and which signed refusals a sender
retries: the table must name every code the code base can raise, with the status `gateway/problems.py` answers it
with, and mark as transient (T) exactly the refusals the outbox retries.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

from gateway.outbox import TRANSIENT_CODES
from gateway.problems import STATUS, problem_response, status_for
from protocol.errors import ComityError

ROOT = Path(__file__).resolve().parents[2]
# answered by gateway/problems.py (and read-timeout by gateway/federation.py) itself, not raised as a ComityError
HANDLER_CODES = {"internal-error", "store-unavailable", "read-timeout"}


def _raised_codes() -> dict[str, str]:
    """code -> class name, for every ComityError subclass of the product packages."""
    for package in ("config", "crypto", "gateway", "protocol", "store"):
        for module in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            importlib.import_module(module.name)
    codes: dict[str, str] = {}
    pending: list[type[ComityError]] = [ComityError]
    while pending:
        cls = pending.pop()
        codes.setdefault(cls.code, cls.__qualname__)
        pending += cls.__subclasses__()
    return codes


def _section_12() -> dict[str, tuple[int, str]]:
    """code -> (HTTP status, sender column) from the table of docs/protocol.md section 12."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## 12. Error codes\n", 1)[1].split("\n## 13.", 1)[0]
    rows: dict[str, tuple[int, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) != 5 or not re.fullmatch(r"(`[a-z0-9-]+`(, )?)+", cells[0]):
            continue
        assert cells[1].isdigit(), f"section 12 gives no plain HTTP status: {line}"
        for code in re.findall(r"`([a-z0-9-]+)`", cells[0]):
            assert code not in rows, f"section 12 lists {code} twice"
            rows[code] = (int(cells[1]), cells[4])
    return rows


def test_every_code_the_code_base_raises_has_its_status() -> None:
    raised = _raised_codes()
    missing = {code: name for code, name in raised.items() if code not in STATUS}
    assert not missing, f"add these codes to gateway/problems.py STATUS: {missing}"
    assert set(STATUS) == set(raised) | HANDLER_CODES, "STATUS lists a code nothing raises"


def test_section_12_lists_every_code_with_the_status_it_is_answered_with() -> None:
    documented = _section_12()
    assert set(documented) == set(STATUS), (
        f"only in docs: {sorted(set(documented) - set(STATUS))}; undocumented: {sorted(set(STATUS) - set(documented))}"
    )
    wrong = {code: (status, STATUS[code][0]) for code, (status, _) in documented.items() if STATUS[code][0] != status}
    assert not wrong, f"docs/protocol.md gives another status (docs, code): {wrong}"


def test_section_12_marks_as_transient_exactly_the_refusals_the_outbox_retries() -> None:
    transient = {code for code, (_, sender) in _section_12().items() if sender == "T"}
    assert transient == TRANSIENT_CODES


@pytest.mark.parametrize("code", sorted(STATUS))
def test_a_problem_document_carries_its_code_type_and_status(code: str) -> None:
    response = problem_response(code, "what to do next")
    assert response.status == status_for(code)[0] == STATUS[code][0]
    assert response.content_type == "application/problem+json"
    assert isinstance(response.body, bytes)
    document = json.loads(response.body)
    assert document["type"] == f"urn:comity:problem:{code}" and document["code"] == code
    assert document["status"] == STATUS[code][0] and document["title"] == STATUS[code][1]
