"""The life cycle of a case: one transition table, and the requirements some events carry.

Sans-IO, in the manner of h11: :func:`apply` takes a state, an event and the facts the event needs
(:class:`TransitionContext`) and returns the next state or raises. It records nothing and sends nothing; the gateway
ledgers each transition and reports it to the other side as a signed status report.

Every legal move is a row of :data:`TRANSITIONS`; anything else is an :class:`IllegalTransition` naming the state and
the event. Events that carry a decision are checked against the Convention before the move:

- ``refuse``: a ground (art. 46(21)(a) to (d), no dual criminality or de minimis under 46(9)(b), or for extradition
  the grounds of art. 44), reasons (46(23)), and a consultation on record (46(26); 44(17) for extradition). Bank
  secrecy is never a ground (46(8)); fiscal matters are no ground on their own (46(22), 44(16)).
- ``postpone``: the ongoing investigation, prosecution or proceeding it would interfere with (46(25)), and a
  consultation on record (46(26)).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from protocol.errors import InvalidMessage, ProtocolError
from protocol.requests import RequestType

__all__ = [
    "EVENT_SIDE",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "ConsultationRequired",
    "Event",
    "IllegalTransition",
    "InvalidRefusalGround",
    "Postponement",
    "PostponementReasonRequired",
    "Refusal",
    "RefusalGround",
    "RefusalGroundRequired",
    "RefusalReasonsRequired",
    "Side",
    "State",
    "TransitionContext",
    "TransitionRefused",
    "WrongSide",
    "allowed_events",
    "apply",
    "parse_event",
    "parse_state",
    "reachable",
]


class State(enum.StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    RECEIVED = "received"
    ACKNOWLEDGED = "acknowledged"
    UNDER_REVIEW = "under_review"
    ADDITIONAL_INFORMATION_REQUESTED = "additional_information_requested"  # art. 46(16)
    IN_EXECUTION = "in_execution"
    PARTIALLY_EXECUTED = "partially_executed"
    EXECUTED = "executed"
    REFUSED = "refused"
    POSTPONED = "postponed"  # art. 46(25)
    WITHDRAWN = "withdrawn"  # art. 46(24): the assistance is no longer required
    CLOSED = "closed"


class Event(enum.StrEnum):
    SEND = "send"
    RECEIVE = "receive"
    ACKNOWLEDGE = "acknowledge"
    BEGIN_REVIEW = "begin_review"
    REQUEST_INFORMATION = "request_information"
    SUPPLY_INFORMATION = "supply_information"
    BEGIN_EXECUTION = "begin_execution"
    EXECUTE_PART = "execute_part"
    COMPLETE_EXECUTION = "complete_execution"
    REFUSE = "refuse"
    POSTPONE = "postpone"
    RESUME = "resume"
    WITHDRAW = "withdraw"
    CLOSE = "close"


class Side(enum.StrEnum):
    REQUESTING = "requesting"
    REQUESTED = "requested"
    EITHER = "either"


_S = State
_E = Event

TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (_S.DRAFT, _E.SEND): _S.SENT,
    (_S.SENT, _E.RECEIVE): _S.RECEIVED,
    (_S.RECEIVED, _E.ACKNOWLEDGE): _S.ACKNOWLEDGED,
    (_S.ACKNOWLEDGED, _E.BEGIN_REVIEW): _S.UNDER_REVIEW,
    # art. 46(16): additional information, during review or when execution shows it is needed
    (_S.UNDER_REVIEW, _E.REQUEST_INFORMATION): _S.ADDITIONAL_INFORMATION_REQUESTED,
    (_S.IN_EXECUTION, _E.REQUEST_INFORMATION): _S.ADDITIONAL_INFORMATION_REQUESTED,
    (_S.PARTIALLY_EXECUTED, _E.REQUEST_INFORMATION): _S.ADDITIONAL_INFORMATION_REQUESTED,
    (_S.ADDITIONAL_INFORMATION_REQUESTED, _E.SUPPLY_INFORMATION): _S.UNDER_REVIEW,
    (_S.UNDER_REVIEW, _E.BEGIN_EXECUTION): _S.IN_EXECUTION,
    (_S.IN_EXECUTION, _E.EXECUTE_PART): _S.PARTIALLY_EXECUTED,
    (_S.PARTIALLY_EXECUTED, _E.EXECUTE_PART): _S.PARTIALLY_EXECUTED,
    (_S.IN_EXECUTION, _E.COMPLETE_EXECUTION): _S.EXECUTED,
    (_S.PARTIALLY_EXECUTED, _E.COMPLETE_EXECUTION): _S.EXECUTED,
    # art. 46(21): refusal after review, including when information asked for never came (46(21)(a))
    (_S.UNDER_REVIEW, _E.REFUSE): _S.REFUSED,
    (_S.ADDITIONAL_INFORMATION_REQUESTED, _E.REFUSE): _S.REFUSED,
    (_S.POSTPONED, _E.REFUSE): _S.REFUSED,
    # art. 46(25): postponement defers assistance that would otherwise be given; resuming means executing
    (_S.UNDER_REVIEW, _E.POSTPONE): _S.POSTPONED,
    (_S.IN_EXECUTION, _E.POSTPONE): _S.POSTPONED,
    (_S.PARTIALLY_EXECUTED, _E.POSTPONE): _S.POSTPONED,
    (_S.POSTPONED, _E.RESUME): _S.IN_EXECUTION,
    # art. 46(24): the requesting state says promptly when the assistance is no longer required
    **{
        (state, _E.WITHDRAW): _S.WITHDRAWN
        for state in (
            _S.SENT,
            _S.RECEIVED,
            _S.ACKNOWLEDGED,
            _S.UNDER_REVIEW,
            _S.ADDITIONAL_INFORMATION_REQUESTED,
            _S.IN_EXECUTION,
            _S.PARTIALLY_EXECUTED,
            _S.POSTPONED,
        )
    },
    (_S.EXECUTED, _E.CLOSE): _S.CLOSED,
    (_S.REFUSED, _E.CLOSE): _S.CLOSED,
    (_S.WITHDRAWN, _E.CLOSE): _S.CLOSED,
}

TERMINAL_STATES: Final = frozenset({State.CLOSED})

# who may cause each event; the gateway checks a peer's status report against it
EVENT_SIDE: Final[dict[Event, Side]] = {
    _E.SEND: Side.REQUESTING,
    _E.RECEIVE: Side.REQUESTED,
    _E.ACKNOWLEDGE: Side.REQUESTED,
    _E.BEGIN_REVIEW: Side.REQUESTED,
    _E.REQUEST_INFORMATION: Side.REQUESTED,
    _E.SUPPLY_INFORMATION: Side.REQUESTING,
    _E.BEGIN_EXECUTION: Side.REQUESTED,
    _E.EXECUTE_PART: Side.REQUESTED,
    _E.COMPLETE_EXECUTION: Side.REQUESTED,
    _E.REFUSE: Side.REQUESTED,
    _E.POSTPONE: Side.REQUESTED,
    _E.RESUME: Side.REQUESTED,
    _E.WITHDRAW: Side.REQUESTING,
    _E.CLOSE: Side.EITHER,
}


class RefusalGround(enum.StrEnum):
    NOT_CONFORMING = "46(21)(a)"  # the request does not conform to article 46
    ESSENTIAL_INTERESTS = "46(21)(b)"  # sovereignty, security, ordre public or other essential interests
    DOMESTIC_LAW_PROHIBITS = "46(21)(c)"  # the action would be forbidden for a similar domestic offence
    CONTRARY_TO_MLA_SYSTEM = "46(21)(d)"  # contrary to the requested state's legal system for MLA
    NO_DUAL_CRIMINALITY = "no-dual-criminality"  # 46(9)(b) for assistance, 44(1) for extradition
    DE_MINIMIS = "de-minimis"  # 46(9)(b)
    NATIONAL = "44(11)"  # extradition: the person is a national (the case must then be prosecuted at home)
    DISCRIMINATION = "44(15)"  # extradition: prosecution or punishment on discriminatory grounds
    EXTRADITION_CONDITIONS = "44(8)"  # extradition: a condition of domestic law or treaty, e.g. minimum penalty
    BANK_SECRECY = "bank-secrecy"  # never a ground (46(8)); present so that citing it is refused, not misread
    FISCAL_MATTERS = "fiscal-matters"  # no ground on its own (46(22), 44(16))


_MLA_GROUNDS: Final = frozenset(
    {
        RefusalGround.NOT_CONFORMING,
        RefusalGround.ESSENTIAL_INTERESTS,
        RefusalGround.DOMESTIC_LAW_PROHIBITS,
        RefusalGround.CONTRARY_TO_MLA_SYSTEM,
        RefusalGround.NO_DUAL_CRIMINALITY,
        RefusalGround.DE_MINIMIS,
    }
)
_EXTRADITION_GROUNDS: Final = frozenset(
    {
        RefusalGround.NO_DUAL_CRIMINALITY,
        RefusalGround.NATIONAL,
        RefusalGround.DISCRIMINATION,
        RefusalGround.EXTRADITION_CONDITIONS,
    }
)
_EXTRADITION_TYPES: Final = frozenset({RequestType.EXTRADITION, RequestType.PROVISIONAL_ARREST})


@dataclass(frozen=True)
class Refusal:
    grounds: frozenset[RefusalGround]
    reasons: str  # art. 46(23): the reasons given to the requesting state


@dataclass(frozen=True)
class Postponement:
    interfered_proceeding: str  # the ongoing investigation, prosecution or proceeding, by reference (46(25))
    reasons: str = ""


@dataclass(frozen=True)
class TransitionContext:
    """The facts an event needs. Plain values; the gateway fills in what it has on record."""

    request_type: RequestType = RequestType.MLA_CRIMINAL
    side: Side | None = None  # who causes the event; None skips the check (a local, already-authorised action)
    consultation_id: str | None = None  # the consultation on record (art. 46(26), 44(17))
    refusal: Refusal | None = None
    postponement: Postponement | None = None


# --- errors -------------------------------------------------------------------------------------------------------


class TransitionRefused(ProtocolError):
    """Base of the life-cycle errors: the event cannot move the case from ``state``."""

    code = "transition-refused"

    def __init__(self, state: State, event: Event, message: str) -> None:
        super().__init__(f"cannot {event.value} a case in state {state.value}: {message}")
        self.state = state
        self.event = event


class IllegalTransition(TransitionRefused):
    code = "illegal-transition"

    def __init__(self, state: State, event: Event) -> None:
        allowed = ", ".join(e.value for e in allowed_events(state)) or "none (the case is closed)"
        super().__init__(state, event, f"no such transition; events allowed in {state.value}: {allowed}")


class WrongSide(TransitionRefused):
    code = "transition-wrong-side"


class RefusalGroundRequired(TransitionRefused):
    code = "refusal-ground-required"


class InvalidRefusalGround(TransitionRefused):
    code = "invalid-refusal-ground"


class RefusalReasonsRequired(TransitionRefused):
    code = "refusal-reasons-required"


class ConsultationRequired(TransitionRefused):
    code = "consultation-required"


class PostponementReasonRequired(TransitionRefused):
    code = "postponement-reason-required"


# --- the machine --------------------------------------------------------------------------------------------------


def parse_state(value: object) -> State:
    """The :class:`State` a status report names, or :class:`InvalidMessage`."""
    if isinstance(value, str) and value in State._value2member_map_:
        return State(value)
    raise InvalidMessage(f"unknown case state; known states: {', '.join(State)}")


def parse_event(value: object) -> Event:
    """The :class:`Event` a status report names, or :class:`InvalidMessage`."""
    if isinstance(value, str) and value in Event._value2member_map_:
        return Event(value)
    raise InvalidMessage(f"unknown case event; known events: {', '.join(Event)}")


def allowed_events(state: State) -> tuple[Event, ...]:
    """The events :data:`TRANSITIONS` accepts in ``state``, in declaration order."""
    return tuple(event for event in Event if (state, event) in TRANSITIONS)


def reachable(state: State, event: Event, target: State, side: Side) -> bool:
    """Whether a case in ``state`` can get to ``target`` by moves of :data:`TRANSITIONS` ending with ``event``, each
    a move ``side`` may make: what a counterpart's status report (``side`` is the counterpart's) may move our view of a
    case by. Reports may overtake each other, so the counterpart's moves before the last need not have been reported
    yet; ours are in ``state`` already, so no path goes through one of them; none leaves a terminal state."""
    seen, frontier = {state}, [state]
    while frontier:
        here = frontier.pop()
        if here in TERMINAL_STATES:
            continue
        if TRANSITIONS.get((here, event)) is target:
            return True
        for (source, move), then in TRANSITIONS.items():
            if source is here and EVENT_SIDE[move] in (side, Side.EITHER) and then not in seen:
                seen.add(then)
                frontier.append(then)
    return False


def _check_refusal(state: State, context: TransitionContext) -> None:
    event = Event.REFUSE
    refusal = context.refusal
    if refusal is None or not refusal.grounds:
        raise RefusalGroundRequired(
            state, event, "give a ground: art. 46(21)(a) to (d), no dual criminality or de minimis (46(9)(b))"
        )
    # art. 46(8): bank secrecy is never a ground, even next to a valid one
    if RefusalGround.BANK_SECRECY in refusal.grounds:
        raise InvalidRefusalGround(state, event, "bank secrecy is not a ground for refusal (art. 46(8))")
    extradition = context.request_type in _EXTRADITION_TYPES
    valid = _EXTRADITION_GROUNDS if extradition else _MLA_GROUNDS
    # art. 46(22), 44(16): fiscal matters may accompany a ground, never stand alone
    if not refusal.grounds - {RefusalGround.FISCAL_MATTERS}:
        article = "44(16)" if extradition else "46(22)"
        raise InvalidRefusalGround(
            state, event, f"a request may not be refused only because it also involves fiscal matters (art. {article})"
        )
    wrong = sorted(refusal.grounds - valid - {RefusalGround.FISCAL_MATTERS})
    if wrong:
        kind = "an extradition" if extradition else f"a {context.request_type.value}"
        raise InvalidRefusalGround(
            state,
            event,
            f"{', '.join(g.value for g in wrong)} is not a ground to refuse {kind} request;"
            f" valid grounds: {', '.join(sorted(g.value for g in valid))}",
        )
    if not refusal.reasons.strip():
        raise RefusalReasonsRequired(state, event, "reasons must be given for any refusal (art. 46(23))")
    if context.consultation_id is None:
        article = "44(17)" if extradition else "46(26)"
        raise ConsultationRequired(
            state, event, f"consult the requesting state before refusing (art. {article}); record the consultation"
        )


def _check_postponement(state: State, context: TransitionContext) -> None:
    postponement = context.postponement
    if postponement is None or not postponement.interfered_proceeding.strip():
        raise PostponementReasonRequired(
            state,
            Event.POSTPONE,
            "name the ongoing investigation, prosecution or proceeding the assistance would interfere with"
            " (art. 46(25))",
        )
    if context.consultation_id is None:
        raise ConsultationRequired(
            state, Event.POSTPONE, "consult the requesting state before postponing (art. 46(26)); record it"
        )


def apply(state: State, event: Event, context: TransitionContext | None = None) -> State:
    """The state ``event`` moves a case in ``state`` to, or a :class:`TransitionRefused` subclass.

    Order of checks: the transition exists (:class:`IllegalTransition`); the side may cause the event
    (:class:`WrongSide`); the event's requirements hold (refusal, postponement).
    """
    target = TRANSITIONS.get((state, event))
    if target is None:
        raise IllegalTransition(state, event)
    context = context or TransitionContext()
    expected = EVENT_SIDE[event]
    if context.side is not None and expected is not Side.EITHER and context.side is not expected:
        raise WrongSide(state, event, f"only the {expected.value} side may do this, not the {context.side.value} side")
    if event is Event.REFUSE:
        _check_refusal(state, context)
    elif event is Event.POSTPONE:
        _check_postponement(state, context)
    return target
