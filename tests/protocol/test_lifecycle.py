"""The case life cycle: the transition table, the errors naming state and event, the Convention's requirements."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import InvalidMessage, ProtocolError
from protocol.lifecycle import (
    EVENT_SIDE,
    TERMINAL_STATES,
    TRANSITIONS,
    ConsultationRequired,
    Event,
    IllegalTransition,
    InvalidRefusalGround,
    Postponement,
    PostponementReasonRequired,
    Refusal,
    RefusalGround,
    RefusalGroundRequired,
    RefusalReasonsRequired,
    Side,
    State,
    TransitionContext,
    TransitionRefused,
    WrongSide,
    allowed_events,
    apply,
    parse_event,
    parse_state,
)
from protocol.requests import RequestType

CONSULTED = "0f8fad5b-d9cb-469f-a165-70867728950e"
G = RefusalGround


def refusal(*grounds: RefusalGround, reasons: str = "Reasons given to the requesting state.") -> TransitionContext:
    return TransitionContext(consultation_id=CONSULTED, refusal=Refusal(frozenset(grounds), reasons))


def run(*events: Event, start: State = State.DRAFT, context: TransitionContext | None = None) -> State:
    state = start
    for event in events:
        state = apply(state, event, context)
    return state


def test_the_happy_path_to_closed() -> None:
    assert (
        run(
            Event.SEND,
            Event.RECEIVE,
            Event.ACKNOWLEDGE,
            Event.BEGIN_REVIEW,
            Event.REQUEST_INFORMATION,
            Event.SUPPLY_INFORMATION,
            Event.BEGIN_EXECUTION,
            Event.EXECUTE_PART,
            Event.EXECUTE_PART,
            Event.COMPLETE_EXECUTION,
            Event.CLOSE,
        )
        is State.CLOSED
    )


def test_every_state_is_reachable_and_only_closed_is_terminal() -> None:
    reachable = {State.DRAFT}
    frontier = [State.DRAFT]
    while frontier:
        state = frontier.pop()
        for (source, _event), target in TRANSITIONS.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(State)
    assert {state for state in State if not allowed_events(state)} == set(TERMINAL_STATES) == {State.CLOSED}
    assert set(EVENT_SIDE) == set(Event)


def test_illegal_transition_names_the_state_and_the_event() -> None:
    with pytest.raises(IllegalTransition, match=r"^cannot execute_part a case in state draft: no such transition; "):
        apply(State.DRAFT, Event.EXECUTE_PART)
    with pytest.raises(IllegalTransition, match=r"state closed: .* none \(the case is closed\)") as caught:
        apply(State.CLOSED, Event.WITHDRAW)
    assert caught.value.code == "illegal-transition"
    assert (caught.value.state, caught.value.event) == (State.CLOSED, Event.WITHDRAW)
    with pytest.raises(IllegalTransition, match="events allowed in executed: close"):
        apply(State.EXECUTED, Event.REFUSE, refusal(G.ESSENTIAL_INTERESTS))


def test_a_withdrawal_is_possible_until_the_end_but_not_from_a_draft_or_after_execution() -> None:
    assert apply(State.POSTPONED, Event.WITHDRAW) is State.WITHDRAWN
    assert apply(State.ADDITIONAL_INFORMATION_REQUESTED, Event.WITHDRAW) is State.WITHDRAWN
    for state in (State.DRAFT, State.EXECUTED, State.REFUSED, State.WITHDRAWN, State.CLOSED):
        with pytest.raises(IllegalTransition, match=f"cannot withdraw a case in state {state.value}"):
            apply(state, Event.WITHDRAW)


@pytest.mark.parametrize(
    "grounds",
    [
        (G.NOT_CONFORMING,),
        (G.ESSENTIAL_INTERESTS,),
        (G.DOMESTIC_LAW_PROHIBITS,),
        (G.CONTRARY_TO_MLA_SYSTEM,),
        (G.NO_DUAL_CRIMINALITY,),
        (G.DE_MINIMIS,),
        (G.DOMESTIC_LAW_PROHIBITS, G.FISCAL_MATTERS),
    ],
)
def test_a_refusal_on_a_valid_ground_with_reasons_after_consultation(grounds: tuple[RefusalGround, ...]) -> None:
    assert apply(State.UNDER_REVIEW, Event.REFUSE, refusal(*grounds)) is State.REFUSED
    assert apply(State.ADDITIONAL_INFORMATION_REQUESTED, Event.REFUSE, refusal(*grounds)) is State.REFUSED


def test_a_refusal_needs_a_ground() -> None:
    with pytest.raises(RefusalGroundRequired, match=r"cannot refuse a case in state under_review: give a ground"):
        apply(State.UNDER_REVIEW, Event.REFUSE)
    with pytest.raises(RefusalGroundRequired, match=r"46\(21\)\(a\) to \(d\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal())


def test_bank_secrecy_is_never_a_ground() -> None:
    with pytest.raises(InvalidRefusalGround, match=r"bank secrecy is not a ground for refusal \(art\. 46\(8\)\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal(G.BANK_SECRECY))
    with pytest.raises(InvalidRefusalGround, match=r"46\(8\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal(G.BANK_SECRECY, G.ESSENTIAL_INTERESTS))


def test_fiscal_matters_alone_are_no_ground() -> None:
    with pytest.raises(InvalidRefusalGround, match=r"only because it also involves fiscal matters \(art\. 46\(22\)\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal(G.FISCAL_MATTERS))
    extradition = replace(refusal(G.FISCAL_MATTERS), request_type=RequestType.EXTRADITION)
    with pytest.raises(InvalidRefusalGround, match=r"art\. 44\(16\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, extradition)


def test_grounds_depend_on_the_kind_of_request() -> None:
    with pytest.raises(InvalidRefusalGround, match=r"44\(11\) is not a ground to refuse a mla-criminal request"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal(G.NATIONAL))
    national = replace(refusal(G.NATIONAL), request_type=RequestType.EXTRADITION)
    assert apply(State.UNDER_REVIEW, Event.REFUSE, national) is State.REFUSED
    essential = replace(refusal(G.ESSENTIAL_INTERESTS), request_type=RequestType.PROVISIONAL_ARREST)
    with pytest.raises(InvalidRefusalGround, match=r"46\(21\)\(b\) is not a ground to refuse an extradition request"):
        apply(State.UNDER_REVIEW, Event.REFUSE, essential)


def test_a_refusal_needs_reasons_and_a_consultation() -> None:
    with pytest.raises(RefusalReasonsRequired, match=r"reasons must be given for any refusal \(art\. 46\(23\)\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, refusal(G.DE_MINIMIS, reasons=" "))
    unconsulted = replace(refusal(G.NO_DUAL_CRIMINALITY), consultation_id=None)
    with pytest.raises(ConsultationRequired, match=r"consult the requesting state before refusing \(art\. 46\(26\)\)"):
        apply(State.POSTPONED, Event.REFUSE, unconsulted)
    with pytest.raises(ConsultationRequired, match=r"44\(17\)"):
        apply(State.UNDER_REVIEW, Event.REFUSE, replace(unconsulted, request_type=RequestType.EXTRADITION))


def test_a_postponement_needs_the_proceeding_it_would_interfere_with_and_a_consultation() -> None:
    with pytest.raises(PostponementReasonRequired, match=r"cannot postpone a case in state in_execution: .*46\(25\)"):
        apply(State.IN_EXECUTION, Event.POSTPONE, TransitionContext(consultation_id=CONSULTED))
    blank = TransitionContext(consultation_id=CONSULTED, postponement=Postponement(interfered_proceeding=""))
    with pytest.raises(PostponementReasonRequired):
        apply(State.UNDER_REVIEW, Event.POSTPONE, blank)
    reasoned = Postponement(interfered_proceeding="Domestic investigation 12/2026 of the same accounts")
    with pytest.raises(ConsultationRequired, match=r"before postponing \(art\. 46\(26\)\)"):
        apply(State.UNDER_REVIEW, Event.POSTPONE, TransitionContext(postponement=reasoned))
    context = TransitionContext(consultation_id=CONSULTED, postponement=reasoned)
    assert apply(State.PARTIALLY_EXECUTED, Event.POSTPONE, context) is State.POSTPONED
    assert apply(State.POSTPONED, Event.RESUME) is State.IN_EXECUTION


def test_only_the_right_side_may_cause_an_event() -> None:
    requesting = TransitionContext(side=Side.REQUESTING)
    with pytest.raises(WrongSide, match="cannot begin_execution a case in state under_review: only the requested side"):
        apply(State.UNDER_REVIEW, Event.BEGIN_EXECUTION, requesting)
    assert apply(State.ADDITIONAL_INFORMATION_REQUESTED, Event.SUPPLY_INFORMATION, requesting) is State.UNDER_REVIEW
    assert apply(State.REFUSED, Event.CLOSE, TransitionContext(side=Side.REQUESTED)) is State.CLOSED
    assert apply(State.REFUSED, Event.CLOSE, requesting) is State.CLOSED


def test_errors_are_typed_protocol_errors_with_stable_codes() -> None:
    codes = {
        cls: cls.code
        for cls in (
            TransitionRefused,
            IllegalTransition,
            WrongSide,
            RefusalGroundRequired,
            InvalidRefusalGround,
            RefusalReasonsRequired,
            ConsultationRequired,
            PostponementReasonRequired,
        )
    }
    assert codes == {
        TransitionRefused: "transition-refused",
        IllegalTransition: "illegal-transition",
        WrongSide: "transition-wrong-side",
        RefusalGroundRequired: "refusal-ground-required",
        InvalidRefusalGround: "invalid-refusal-ground",
        RefusalReasonsRequired: "refusal-reasons-required",
        ConsultationRequired: "consultation-required",
        PostponementReasonRequired: "postponement-reason-required",
    }
    assert all(issubclass(cls, ProtocolError) for cls in codes)


def test_wire_names_parse_or_give_invalid_message() -> None:
    assert parse_state("under_review") is State.UNDER_REVIEW
    assert parse_event("request_information") is Event.REQUEST_INFORMATION
    with pytest.raises(InvalidMessage, match="unknown case state"):
        parse_state("lost")
    with pytest.raises(InvalidMessage, match="unknown case event"):
        parse_event(3)


contexts = st.builds(
    TransitionContext,
    request_type=st.sampled_from(RequestType),
    side=st.none() | st.sampled_from(Side),
    consultation_id=st.none() | st.just(CONSULTED),
    refusal=st.none()
    | st.builds(Refusal, st.frozensets(st.sampled_from(RefusalGround), max_size=3), st.sampled_from(["", "reasons"])),
    postponement=st.none() | st.builds(Postponement, st.sampled_from(["", "case 12/2026"])),
)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(Event), contexts), max_size=60))
def test_random_event_sequences_stay_in_the_table(steps: list[tuple[bool, Event, TransitionContext]]) -> None:
    state = State.DRAFT
    for follow_table, drawn, context in steps:
        # half the steps pick an event the table allows, so the walk gets past the first states
        allowed = allowed_events(state)
        event = allowed[list(Event).index(drawn) % len(allowed)] if follow_table and allowed else drawn
        refused: TransitionRefused | None = None
        try:
            new_state = apply(state, event, context)
        except TransitionRefused as exc:
            refused = exc
        if refused is not None:
            # refusals are the table's or a requirement's, and name the state and the event
            assert (refused.state, refused.event) == (state, event)
            assert refused.message.startswith(f"cannot {event.value} a case in state {state.value}: ")
            assert isinstance(refused, IllegalTransition) == ((state, event) not in TRANSITIONS)
            continue
        assert TRANSITIONS[(state, event)] is new_state
        state = new_state


def test_docs_show_exactly_the_transition_table() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "requests.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| `(\w+)` \| (\w+) \|$", text, flags=re.MULTILINE)
    assert {(State(s), Event(e)): State(t) for s, e, t, _ in rows} == TRANSITIONS
    assert len(rows) == len(TRANSITIONS)
    assert all(EVENT_SIDE[Event(e)].value == side for _, e, _, side in rows)
    edges = re.findall(r"^    (\w+) --> (\w+): (\w+)$", text, flags=re.MULTILINE)
    assert {(State(s), Event(e)): State(t) for s, t, e in edges} == TRANSITIONS
    assert len(edges) == len(TRANSITIONS)
