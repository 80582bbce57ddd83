"""The pure part of statistics: facets hold codes only, filters, percentiles as percentile_cont, CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import date

import pytest

from gateway.cli.request import example_request
from protocol.lifecycle import RefusalGround
from protocol.requests import AssistanceSought, OffenceArticle, Request, RequestType
from protocol.stats import (
    ASSISTANCE_BITS,
    OFFENCE_BITS,
    REFUSAL_GROUND_BITS,
    Filters,
    InvalidFilter,
    Statistic,
    StatTable,
    codes_of,
    facets_of,
    facets_of_content,
    mask_of,
    parse_filters,
    parse_statistic,
    percentile,
    to_csv,
)

CANARY = "canary-7f3a9c"


def canary_request() -> Request:
    data = example_request(RequestType.MLA_CRIMINAL).to_json()
    data["summary_of_facts"] = f"facts {CANARY}"
    data["purpose"] = f"purpose {CANARY}"
    data["legal_basis"] = {"kind": "treaty", "name": f"Treaty of {CANARY}", "article": f"art. {CANARY}"}
    data["offences"] = [{"article": "23", "national_description": f"lavado {CANARY}"}, {"article": "15"}]
    data["persons"] = [{"role": "suspect", "name": f"Person {CANARY}"}]
    data["deadline"] = {"date": "2027-02-01", "reasons": f"trial {CANARY}"}
    data["urgent"] = True
    data["urgency_reasons"] = f"urgent {CANARY}"
    return Request.parse(data)


def test_facets_hold_codes_only() -> None:
    facets = facets_of(canary_request())
    assert CANARY not in repr(facets)
    assert facets.request_type == "mla-criminal" and facets.legal_basis == "treaty" and facets.uncac_article is None
    assert facets.offences == ("15", "23") and facets.urgent and facets.deadline == date(2027, 2, 1)
    for value in asdict(facets).values():
        assert not isinstance(value, str) or len(value) <= 40


def test_facets_of_an_uncac_basis_and_of_a_request_the_model_refuses() -> None:
    data = example_request(RequestType.EXTRADITION).to_json()
    data["legal_basis"] = {"kind": "uncac", "article": 44, "paragraph": "5"}
    facets = facets_of_content({"request": data})
    assert (facets.legal_basis, facets.uncac_article, facets.request_type) == ("uncac", 44, "extradition")
    # a request whose shape the model refuses still gives its type, and nothing else
    assert facets_of_content({"request": {"type": "freezing", "bogus": CANARY}}) == type(facets)(
        request_type="freezing"
    )
    assert facets_of_content({"request": {"type": CANARY}}).request_type is None
    assert facets_of_content({"text": "a free message"}).request_type is None


def test_filters_parse_and_refuse_without_echoing_values() -> None:
    filters = parse_filters({"direction": "incoming", "from": "2024", "to": "2025-06-30", "country": "ar"})
    assert filters == Filters(direction="in", since=date(2024, 1, 1), until=date(2025, 6, 30), country="AR")
    assert filters.to_json() == {"direction": "incoming", "from": "2024-01-01", "to": "2025-06-30", "country": "AR"}
    assert parse_filters({"to": "2025"}).until == date(2025, 12, 31)
    assert parse_filters({"state": ""}) == Filters()
    bad = [
        {"direction": CANARY},
        {"from": CANARY},
        {"from": "2025-02-30"},
        {"from": "2026", "to": "2025"},
        {"counterpart": CANARY + "!"},
        {"country": CANARY},
        {"type": CANARY},
        {"legal_basis": CANARY},
        {"offence": "26"},
        {"assistance": CANARY},
        {"state": CANARY},
        {"officer": "Not A Name " + CANARY},
        {CANARY: "1"},
    ]
    for query in bad:
        with pytest.raises(InvalidFilter) as refused:
            parse_filters(query)
        assert refused.value.code == "invalid-request"
        assert CANARY not in refused.value.message or query.keys() == {CANARY}, query
    with pytest.raises(InvalidFilter):
        parse_statistic("by-nothing")
    assert parse_statistic("by-year") is Statistic.BY_YEAR


def test_percentile_interpolates_as_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)
    assert percentile([float(v) for v in range(1, 11)], 0.9) == pytest.approx(9.1)
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_csv_escapes_separators_quotes_and_formulas() -> None:
    table = StatTable(
        Statistic.BY_COUNTERPART,
        [("incoming", 'a,"b"', 1), ("incoming", "=HYPERLINK(1)", 2), ("outgoing", "line\nbreak", 3), ("x", None, 0)],
    )
    text = to_csv(table)
    assert text.startswith("direction,counterpart,count\r\n")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed == [
        ["direction", "counterpart", "count"],
        ["incoming", 'a,"b"', "1"],
        ["incoming", "'=HYPERLINK(1)", "2"],
        ["outgoing", "line\nbreak", "3"],
        ["x", "", "0"],
    ]
    assert '"a,""b"""' in text


def test_every_code_has_a_bit_and_masks_round_trip() -> None:
    for enum_type, bits in (
        (OffenceArticle, OFFENCE_BITS),
        (AssistanceSought, ASSISTANCE_BITS),
        (RefusalGround, REFUSAL_GROUND_BITS),
    ):
        assert set(bits) == {member.value for member in enum_type}, enum_type
        assert len(bits) == len(set(bits)) <= 31  # a signed 32-bit column on both backends
        assert codes_of(mask_of(set(bits), bits), bits) == bits
    # positions are frozen: a stored mask keeps its meaning (append new codes at the end)
    assert OFFENCE_BITS[:3] == ("15", "16(1)", "16(2)") and OFFENCE_BITS[9] == "23"
    assert mask_of({"23", "15", "not-a-code"}, OFFENCE_BITS) == (1 << 0) | (1 << 9)
    assert REFUSAL_GROUND_BITS[1] == "46(21)(b)" and ASSISTANCE_BITS[6] == "tracing-proceeds"
