"""protocol/markings.py: a caveat is matched by its name, the part before ':' (docs/protocol.md 5.1), wherever it
has an effect; an embargo must carry a real date."""

from __future__ import annotations

from datetime import date

import pytest

from protocol.markings import (
    MarkingRefused,
    MarkingScheme,
    asks_confidentiality,
    caveat_name,
    embargo_until,
    limits_onward,
)
from protocol.messages import Marking


def marked(*caveats: str, level: str = "CONFIDENTIAL") -> Marking:
    return Marking(level=level, caveats=sorted(caveats))


def test_a_caveat_is_named_by_the_part_before_the_colon() -> None:
    assert caveat_name("uncac-46-19:proc-17") == "uncac-46-19"
    assert caveat_name("no-onward") == "no-onward"


@pytest.mark.parametrize("caveat", ["uncac-46-19", "uncac-46-19:proc-17", "no-onward", "no-onward:ar.mj"])
def test_an_onward_caveat_limits_onward_use_with_or_without_a_parameter(caveat: str) -> None:
    marking = marked(caveat, "uncac-46-20")
    assert limits_onward(marking)


@pytest.mark.parametrize("caveat", ["uncac-46-20", "uncac-46-20:fact-only"])
def test_confidentiality_is_asked_with_or_without_a_parameter(caveat: str) -> None:
    assert asks_confidentiality(marked(caveat))
    assert not limits_onward(marked(caveat))


def test_no_caveat_no_effect() -> None:
    marking = marked("embargo:2027-03-01")
    assert not asks_confidentiality(marking) and not limits_onward(marking)


@pytest.mark.parametrize(
    "caveat",
    ["embargo", "embargo:soon", "embargo:2027-13-45", "embargo:2027-02-30", "embargo:20270301", "embargo:2027-W09-1"],
)
def test_an_embargo_without_a_real_date_is_not_admitted(caveat: str) -> None:
    scheme = MarkingScheme()
    with pytest.raises(MarkingRefused, match=r"an embargo caveat must carry a date: embargo:YYYY-MM-DD"):
        scheme.admit(marked(caveat))
    with pytest.raises(MarkingRefused, match="embargo"):
        scheme.check_accreditation(marked(caveat), "STRICTLY CONFIDENTIAL", ["embargo"], "au.ag")
    # what was stored before the rule is held to the names alone: its case stays workable (clearance, case work)
    scheme.check(marked(caveat))


def test_of_several_embargoes_the_latest_holds() -> None:
    marking = marked("embargo:2026-01-01", "embargo:2099-12-31")
    MarkingScheme().admit(marking)
    assert embargo_until(marking) == date(2099, 12, 31)
    assert embargo_until(marked("embargo:2027-03-01")) == date(2027, 3, 1)
    assert embargo_until(marked("no-onward")) is None


def test_accreditation_honours_a_caveat_by_its_name() -> None:
    scheme = MarkingScheme()
    scheme.check_accreditation(marked("uncac-46-19:proc-17"), "CONFIDENTIAL", ["uncac-46-19"], "au.ag")
    with pytest.raises(MarkingRefused, match=r"au\.ag does not honour the caveat 'uncac-46-19'"):
        scheme.check_accreditation(marked("uncac-46-19:proc-17"), "CONFIDENTIAL", ["no-onward"], "au.ag")
    with pytest.raises(MarkingRefused, match="unknown caveat 'secret-sauce:x'"):
        scheme.check(marked("secret-sauce:x"))
