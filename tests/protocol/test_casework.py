"""Case work rules: vocabulary, dates, the safe-conduct end (art. 46(27)), overdue and upcoming on a given day."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.casework import (
    DateKind,
    Due,
    Flag,
    InvalidWorkDate,
    Stage,
    UnknownWorkKind,
    confirm_in_writing_due,
    due_stage,
    overdue,
    parse_date_kind,
    parse_day,
    parse_flag,
    parse_note,
    safe_conduct_end,
    upcoming,
)
from protocol.errors import InvalidMessage

TODAY = date(2026, 11, 28)
days = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))


def test_vocabulary_is_parsed_strictly() -> None:
    assert parse_date_kind("hearing") is DateKind.HEARING
    assert parse_flag("ministerial-decision-required") is Flag.MINISTERIAL_DECISION_REQUIRED
    for bad in ("Hearing", "", None, 3, "hearing "):
        with pytest.raises(UnknownWorkKind):
            parse_date_kind(bad)
        with pytest.raises(UnknownWorkKind):
            parse_flag(bad)
    # confirm-in-writing is opened by an oral request only
    with pytest.raises(UnknownWorkKind, match="oral request"):
        parse_date_kind("confirm-in-writing")
    assert parse_date_kind("confirm-in-writing", addable=False) is DateKind.CONFIRM_IN_WRITING


def test_days_are_plain_calendar_dates() -> None:
    assert parse_day("2026-02-28") == date(2026, 2, 28)
    for bad in (
        "2026-02-30",
        "2026-2-3",
        "2026-02-28T00:00:00Z",
        "28/02/2026",
        "",
        None,
        20260228,
        "\uff12\uff10\uff12\uff16-02-28",
    ):
        with pytest.raises(InvalidWorkDate):
            parse_day(bad)


def test_notes() -> None:
    assert parse_note(None) is None and parse_note("  ") is None and parse_note(" call back ") == "call back"
    with pytest.raises(InvalidMessage):
        parse_note(5)
    with pytest.raises(InvalidMessage):
        parse_note("x" * 2001)


def test_safe_conduct_ends_fifteen_days_after_the_person_is_informed() -> None:
    # informed on 1 March: the fifteen consecutive days are 2 to 16 March
    assert safe_conduct_end(date(2026, 3, 1)) == date(2026, 3, 16)
    assert safe_conduct_end(date(2026, 12, 20)) == date(2027, 1, 4)
    assert safe_conduct_end(date(2026, 3, 1), agreed_days=30) == date(2026, 3, 31)
    for bad in (0, -1, 367):
        with pytest.raises(InvalidWorkDate):
            safe_conduct_end(date(2026, 3, 1), agreed_days=bad)


@given(days)
def test_safe_conduct_is_always_fifteen_consecutive_days(informed: date) -> None:
    end = safe_conduct_end(informed)
    assert (end - informed).days == 15
    assert end > informed


def test_confirm_in_writing() -> None:
    assert confirm_in_writing_due(TODAY) == date(2026, 12, 1)
    assert confirm_in_writing_due(TODAY, 1) == date(2026, 11, 29)


def test_stages() -> None:
    assert due_stage(TODAY - timedelta(days=1), TODAY, 3) is Stage.OVERDUE
    assert due_stage(TODAY, TODAY, 3) is Stage.DUE_SOON  # the last day on time
    assert due_stage(TODAY + timedelta(days=3), TODAY, 3) is Stage.DUE_SOON
    assert due_stage(TODAY + timedelta(days=4), TODAY, 3) is None
    assert due_stage(TODAY, TODAY, 0) is Stage.DUE_SOON


def _item(n: int, due: date, done: bool = False) -> Due:
    return Due(n, f"case-{n}", DateKind.DEADLINE, due, done)


def test_overdue_and_upcoming_lists() -> None:
    items = [
        _item(1, TODAY - timedelta(days=10)),
        _item(2, TODAY - timedelta(days=1)),
        _item(3, TODAY - timedelta(days=5), done=True),
        _item(4, TODAY),
        _item(5, TODAY + timedelta(days=7)),
        _item(6, TODAY + timedelta(days=8)),
    ]
    assert [i.id for i in overdue(items, TODAY)] == [1, 2]
    assert [i.id for i in upcoming(items, TODAY, 7)] == [4, 5]
    assert [i.id for i in upcoming(items, TODAY, 0)] == [4]
    with pytest.raises(InvalidMessage):
        upcoming(items, TODAY, -1)


@given(st.lists(st.tuples(days, st.booleans()), max_size=30), days, st.integers(min_value=0, max_value=366))
def test_lists_partition_open_items(raw: list[tuple[date, bool]], today: date, window: int) -> None:
    items = [_item(n, due, done) for n, (due, done) in enumerate(raw)]
    late, soon = overdue(items, today), upcoming(items, today, window)
    assert not {i.id for i in late} & {i.id for i in soon}
    for item in items:
        stage = due_stage(item.due, today, window)
        if item.done:
            assert item not in late and item not in soon
        else:
            assert (item in late) == (stage is Stage.OVERDUE)
            assert (item in soon) == (stage is Stage.DUE_SOON)
    assert [i.due for i in late] == sorted(i.due for i in late)
    assert [i.due for i in soon] == sorted(i.due for i in soon)
