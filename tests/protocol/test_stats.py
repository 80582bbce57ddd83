"""The pure part of statistics: facets hold codes only, filters, percentiles as percentile_cont, CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import date
from typing import Any

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
    population_filters,
    suppress,
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


# --- small cells (decision 114) ---------------------------------------------------------------------------------------


def _table(statistic: Statistic, *rows: tuple[Any, ...]) -> StatTable:
    return StatTable(statistic, list(rows))


def test_a_small_count_withholds_its_partition_and_a_small_population_shows_nothing() -> None:
    by_state = _table(
        Statistic.BY_STATE,
        ("incoming", "acknowledged", 3),
        ("incoming", "received", 20),
        ("outgoing", "executed", 6),
        ("outgoing", "sent", 9),
    )
    # 3 withheld alone could be worked out from the total, or from open-closed in the same answer: the direction's
    # counts all go; the other direction, without a small count, stays exact
    assert suppress(by_state, 5, {"incoming": 23, "outgoing": 15}).rows == [
        ("incoming", "acknowledged", None),
        ("incoming", "received", None),
        ("outgoing", "executed", 6),
        ("outgoing", "sent", 9),
    ]
    # a direction of fewer cases than the threshold has no rows: their keys would name the few cases' codes
    offences = _table(Statistic.BY_OFFENCE, ("incoming", "15", 1), ("incoming", "23", 1), ("outgoing", "15", 9))
    assert suppress(offences, 5, {"incoming": 1, "outgoing": 9}).rows == [("outgoing", "15", 9)]
    assert suppress(by_state, 1, {}) == by_state  # 1: every count


def test_what_derives_from_a_withheld_count_is_withheld_with_it() -> None:
    basis = _table(
        Statistic.BY_LEGAL_BASIS,
        ("incoming", "reciprocity", 2, 0.1),
        ("incoming", "treaty", 8, 0.4),
        ("incoming", "uncac", 10, 0.5),
    )
    assert suppress(basis, 5, {"incoming": 20}).rows == [
        ("incoming", "reciprocity", None, None),
        ("incoming", "treaty", None, None),
        ("incoming", "uncac", None, None),
    ]
    durations = _table(
        Statistic.DURATIONS,
        ("incoming", "acknowledge", 9, 3600.0, 7200.0),
        ("incoming", "first-answer", 4, 86400.0, 90000.0),
    )
    assert suppress(durations, 5, {"incoming": 9}).rows == [
        ("incoming", "acknowledge", 9, 3600.0, 7200.0),
        ("incoming", "first-answer", None, None, None),
    ]
    # a case counts under each of its codes: no total to work a cell out from, so only the small cells go
    offences = _table(Statistic.BY_OFFENCE, ("incoming", "15", 3), ("incoming", "23", 12))
    assert suppress(offences, 5, {"incoming": 12}).rows == [("incoming", "15", None), ("incoming", "23", 12)]
    # overdue: the figures go when either, or their difference, is small (6 of 7: one open case with dates is
    # on time)
    overdue = _table(Statistic.OVERDUE, ("incoming", 6, 7), ("outgoing", 9, 9))
    assert suppress(overdue, 5, {"incoming": 30, "outgoing": 30}).rows == [("incoming", None, None), ("outgoing", 9, 9)]
    on_time = _table(Statistic.OVERDUE, ("incoming", 0, 12))
    assert suppress(on_time, 5, {"incoming": 30}) == on_time


def test_the_population_ignores_the_filters_on_what_a_request_says() -> None:
    filters = parse_filters({"direction": "in", "counterpart": "ar.mj", "type": "extradition", "offence": "15"})
    assert population_filters(filters).to_json() == {"direction": "incoming", "counterpart": "ar.mj"}
    assert parse_filters({"from": "2026-02", "to": "2026-02"}).to_json() == {"from": "2026-02-01", "to": "2026-02-28"}
    assert parse_filters({"to": "2024-12"}).to_json() == {"to": "2024-12-31"}
    assert not parse_filters({"from": "2026", "to": "2026-03"}).days
    assert parse_filters({"from": "2026-03-01"}).days
