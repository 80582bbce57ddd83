"""Received status reports: the transition time they carry orders them; a malformed one refuses the envelope."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.requests import status_report_of
from protocol.errors import InvalidMessage
from protocol.lifecycle import Event, Side, State


def test_a_transition_report_carries_its_time() -> None:
    status = {"state": "acknowledged", "event": "acknowledge", "at": "2026-11-28T10:00:01.000000Z"}
    report = status_report_of({"status": status}, Side.REQUESTED)
    assert (report.state, report.event) == (State.ACKNOWLEDGED, Event.ACKNOWLEDGE)
    assert report.at == datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)


def test_an_answer_to_a_status_query_is_ordered_by_the_last_action() -> None:
    status = {"state": "acknowledged", "last_action_at": "2026-11-28T10:00:01.000000Z"}
    report = status_report_of({"status": status}, Side.REQUESTED)
    assert report.event is None and report.at == datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
    assert status_report_of({"status": {}}, Side.REQUESTED).at is None


@pytest.mark.parametrize("at", ["yesterday", 1764324001, "2026-11-28T10:00:01Z", "2026-13-28T10:00:01.000000Z"])
def test_a_malformed_time_refuses_the_report(at: object) -> None:
    status = {"state": "acknowledged", "event": "acknowledge", "at": at}
    with pytest.raises(InvalidMessage, match=r"status\.at"):
        status_report_of({"status": status}, Side.REQUESTED)


def test_a_transition_after_the_report_was_made_is_refused() -> None:
    """A dishonest peer dating a report in the future would make every later report look stale."""
    status = {"state": "executed", "event": "complete_execution", "at": "2099-01-01T00:00:00.000000Z"}
    made = int(datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC).timestamp())
    with pytest.raises(InvalidMessage, match="later than the report was made"):
        status_report_of({"status": status}, Side.REQUESTED, made)
    on_time = {**status, "at": "2026-11-28T10:00:01.500000Z"}  # iat has whole seconds: a second of slack
    assert status_report_of({"status": on_time}, Side.REQUESTED, made).at is not None


def test_a_transition_report_without_its_time_is_refused() -> None:
    """Without ``at`` a late report could not be ordered and could move the case back."""
    with pytest.raises(InvalidMessage, match=r"status\.at"):
        status_report_of({"status": {"state": "acknowledged", "event": "acknowledge"}}, Side.REQUESTED)
