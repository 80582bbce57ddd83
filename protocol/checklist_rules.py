"""The checklist's rules, one function per element citing its article, and the tables they share;
:func:`checklist_items` applies them in report order and :mod:`protocol.checklist` assembles a ``Checklist``."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.requests import (
    CAVEAT_ASKS,
    AssetDetails,
    AssistanceSought,
    OffenceArticle,
    PersonRole,
    Request,
    RequestType,
    UncacBasis,
    required_caveats,
)

__all__ = [
    "ChecklistItem",
    "ItemStatus",
    "RecipientRequirements",
    "checklist_items",
    "language_accepted",
]


class ItemStatus(enum.StrEnum):
    PRESENT = "present"
    MISSING = "missing"  # a blocking element is absent
    WARNING = "warning"  # a non-blocking element is absent, or a risk the sender should weigh
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True)
class ChecklistItem:
    element: str  # stable id, the article where it can be: "46(15)(a)", "55(3)(b)", "offences", "legal-basis"
    label: str
    status: ItemStatus
    blocking: bool  # the element blocks a formal request when missing (a property of the rule)
    what_to_add: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "element": self.element,
            "label": self.label,
            "status": self.status.value,
            "blocking": self.blocking,
            "what_to_add": self.what_to_add,
        }


@dataclass(frozen=True)
class RecipientRequirements:
    """What the recipient's directory entry says about the requests it accepts (plain values; protocol/ does not
    import config/). Build it from ``AuthorityEntry``: ``RecipientRequirements(tuple(entry.languages),
    entry.notes, tuple(entry.roles))``."""

    languages: tuple[str, ...] = ()
    notes: str = ""
    roles: tuple[str, ...] = ()


# --- rule tables --------------------------------------------------------------------------------------------------

_EXTRADITION: Final = frozenset({RequestType.EXTRADITION, RequestType.PROVISIONAL_ARREST})
_ASSETS: Final = frozenset({RequestType.FREEZING, RequestType.CONFISCATION, RequestType.RETURN_OF_ASSETS})
# types that rest on a criminal offence: the offences block (arts. 15-25; 44(1) for extradition, 55(1)-(2)/57)
_CRIMINAL: Final = frozenset({RequestType.MLA_CRIMINAL} | _EXTRADITION | _ASSETS)
# the 46(3) item without which the type makes no sense (any one of the set)
_CORE_ASSISTANCE: Final[dict[RequestType, frozenset[AssistanceSought]]] = {
    RequestType.SERVICE_OF_DOCUMENTS: frozenset({AssistanceSought.SERVICE_OF_DOCUMENTS}),
    RequestType.FREEZING: frozenset(
        {AssistanceSought.SEARCH_SEIZURE_FREEZING, AssistanceSought.CHAPTER_V_IDENTIFY_FREEZE_TRACE}
    ),
    RequestType.CONFISCATION: frozenset({AssistanceSought.CHAPTER_V_RECOVERY}),
    RequestType.RETURN_OF_ASSETS: frozenset({AssistanceSought.CHAPTER_V_RECOVERY}),
}
# measures whose success depends on the person concerned not being alerted first (art. 46(20))
_COVERT: Final = frozenset(
    {
        AssistanceSought.SEARCH_SEIZURE_FREEZING,
        AssistanceSought.TRACING_PROCEEDS,
        AssistanceSought.CHAPTER_V_IDENTIFY_FREEZE_TRACE,
    }
)
# UNCAC articles that fit each type as a legal basis
_BASIS_ARTICLES: Final[dict[RequestType, frozenset[int]]] = {
    RequestType.MLA_CRIMINAL: frozenset({46}),
    RequestType.MLA_CIVIL_ADMINISTRATIVE: frozenset({43, 46}),
    RequestType.EXTRADITION: frozenset({44}),
    RequestType.PROVISIONAL_ARREST: frozenset({44}),
    RequestType.FREEZING: frozenset({46, 54, 55}),
    RequestType.CONFISCATION: frozenset({54, 55}),
    RequestType.RETURN_OF_ASSETS: frozenset({57}),
    RequestType.SERVICE_OF_DOCUMENTS: frozenset({46}),
    RequestType.SPONTANEOUS_INFORMATION: frozenset({46, 56}),
}
# directory roles (config.directory.Role) designated for each type (art. 46(13))
_ROLES: Final[dict[RequestType, frozenset[str]]] = {
    RequestType.EXTRADITION: frozenset({"extradition-central-authority"}),
    RequestType.PROVISIONAL_ARREST: frozenset({"extradition-central-authority"}),
    RequestType.MLA_CIVIL_ADMINISTRATIVE: frozenset({"civil-administrative-focal-point", "mla-central-authority"}),
    RequestType.FREEZING: frozenset({"asset-recovery-focal-point", "mla-central-authority"}),
    RequestType.CONFISCATION: frozenset({"asset-recovery-focal-point", "mla-central-authority"}),
    RequestType.RETURN_OF_ASSETS: frozenset({"asset-recovery-focal-point", "mla-central-authority"}),
}
_DEFAULT_ROLES: Final = frozenset({"mla-central-authority"})


def _blank(text: str) -> bool:
    return not text.strip()


def _item(
    element: str, label: str, *, blocking: bool, hard: Sequence[str] = (), soft: Sequence[str] = ()
) -> ChecklistItem:
    """``hard`` problems make a blocking element missing; ``soft`` ones (and hard ones of a non-blocking element)
    only warn."""
    if hard and blocking:
        return ChecklistItem(element, label, ItemStatus.MISSING, True, "; ".join([*hard, *soft]))
    if hard or soft:
        return ChecklistItem(element, label, ItemStatus.WARNING, blocking, "; ".join([*hard, *soft]))
    return ChecklistItem(element, label, ItemStatus.PRESENT, blocking)


def _not_applicable(element: str, label: str, why: str) -> ChecklistItem:
    return ChecklistItem(element, label, ItemStatus.NOT_APPLICABLE, False, why)


# --- article 46(15) -----------------------------------------------------------------------------------------------


def _requesting_authority(request: Request) -> ChecklistItem:
    hard = ["the name of the requesting authority"] if _blank(request.requesting_authority.name) else []
    soft = [] if hard or not _blank(request.requesting_authority.contact) else ["a contact officer (where possible)"]
    return _item("46(15)(a)", "identity of the authority making the request", blocking=True, hard=hard, soft=soft)


def _proceeding(request: Request) -> ChecklistItem:
    proceeding = request.proceeding
    hard = []
    if proceeding.nature is None:
        hard.append("the nature of the proceeding (investigation, prosecution, judicial, civil or administrative)")
    if _blank(proceeding.subject_matter):
        hard.append("its subject matter")
    if _blank(proceeding.conducting_authority):
        hard.append("the name of the authority conducting it")
    if _blank(proceeding.conducting_authority_functions):
        hard.append("that authority's functions")
    # spontaneous information (46(4)) is not a request: 46(15) applies by analogy and the proceeding only warns
    return _item(
        "46(15)(b)",
        "subject matter and nature of the proceeding; name and functions of the authority conducting it",
        blocking=request.type is not RequestType.SPONTANEOUS_INFORMATION,
        hard=hard,
    )


def _offences(request: Request) -> ChecklistItem:
    label = "offences (arts. 15 to 25), each with the national description"
    required = request.type in _CRIMINAL
    if not request.offences and not required:
        return _not_applicable("offences", label, "none listed; list them where the matter concerns an offence")
    hard = [] if request.offences else ["at least one offence (UNCAC article 15 to 25) with its national description"]
    for index, offence in enumerate(request.offences, start=1):
        if _blank(offence.national_description):
            hard.append(
                f"offence {index} (art. {offence.article.value}): the provision of your law that defines it and its"
                " name"
            )
    return _item("offences", label, blocking=required, hard=hard)


def _sought(request: Request) -> frozenset[AssistanceSought]:
    """What a request asks for, as the 46(15) rules read it: what it lists, or what its type implies. Nothing for an
    extradition, whose type says what it seeks, or for spontaneous information, which asks for nothing (art. 46(4)):
    what they list under assistance_sought waives or requires nothing."""
    if request.type in _EXTRADITION or request.type is RequestType.SPONTANEOUS_INFORMATION:
        return frozenset()
    return frozenset(request.assistance_sought) or _CORE_ASSISTANCE.get(request.type, frozenset())


def _facts(request: Request) -> ChecklistItem:
    label = "summary of the relevant facts"
    # art. 46(15)(c) waives the facts for a request to serve judicial documents: what it asks for decides, not its
    # type (a service request that also asks for a search needs them; another that asks only for service does not)
    if _sought(request) == {AssistanceSought.SERVICE_OF_DOCUMENTS}:
        return _not_applicable("46(15)(c)", label, "not required to serve judicial documents")
    hard = []
    if _blank(request.summary_of_facts):
        hard.append("a summary of the facts: who did what, when and where, and how it links to the requested state")
    return _item("46(15)(c)", label, blocking=True, hard=hard)


def _assistance(request: Request) -> ChecklistItem:
    label = "assistance sought (art. 46(3)) and any particular procedure to follow"
    if request.type in _EXTRADITION:
        return _not_applicable("46(15)(d)", label, f"the request type states what is sought ({request.type.label})")
    if request.type is RequestType.SPONTANEOUS_INFORMATION:
        return _not_applicable("46(15)(d)", label, "spontaneous information asks for nothing (art. 46(4))")
    hard = []
    sought = set(request.assistance_sought)
    if not sought:
        hard.append("the assistance sought: one or more of art. 46(3)(a) to (k)")
    core = _CORE_ASSISTANCE.get(request.type)
    if sought and core and not sought & core:
        options = " or ".join(
            f"{item.article} ({item.label})" for item in sorted(core, key=list(AssistanceSought).index)
        )
        hard.append(f"{options}, which a {request.type.value} request needs")
    if AssistanceSought.OTHER in sought and _blank(request.other_assistance):
        hard.append("what the 'other' assistance (art. 46(3)(i)) is, in other_assistance")
    return _item("46(15)(d)", label, blocking=True, hard=hard)


def _persons(request: Request) -> ChecklistItem:
    label = "identity, location and nationality of any person concerned"
    if request.type in _EXTRADITION:
        return _not_applicable("46(15)(e)", label, "the person sought is checked under art. 44(1)")
    # 46(15)(e) says "where possible": only serving documents, whatever the request's type, is impossible without
    # the addressee and where to find them; every other detail warns
    serving = AssistanceSought.SERVICE_OF_DOCUMENTS in _sought(request)
    needed, problems = [], []
    if not request.persons:
        problems.append("the persons concerned, where possible")
    addressees = [person for person in request.persons if person.role is PersonRole.ADDRESSEE]
    if serving and not addressees:
        needed.append("the addressee of the documents (role 'addressee')")
    elif serving and all(_blank(person.name) or _blank(person.location) for person in addressees):
        needed.append("the addressee's name and where the documents are to be served (location)")
    for index, person in enumerate(request.persons, start=1):
        lacking = [name for name in ("name", "location") if _blank(getattr(person, name))]
        if person.role is not PersonRole.LEGAL_PERSON and _blank(person.nationality):
            lacking.append("nationality")
        if lacking:
            problems.append(f"person {index} ({person.role.value}): {', '.join(lacking)}")
    return _item("46(15)(e)", label, blocking=serving, hard=needed, soft=problems)


def _purpose(request: Request) -> ChecklistItem:
    if request.type is RequestType.SPONTANEOUS_INFORMATION:
        soft = ["why the information may assist the recipient's inquiries or proceedings (art. 46(4))"]
        return _item(
            "46(15)(f)", "purpose of the transmission", blocking=False, soft=soft if _blank(request.purpose) else []
        )
    hard = ["the purpose for which the evidence, information or action is sought"] if _blank(request.purpose) else []
    return _item("46(15)(f)", "purpose of the request", blocking=True, hard=hard)


# --- dual criminality and article 44 -------------------------------------------------------------------------------


def _dual_criminality(request: Request) -> ChecklistItem | None:
    if not request.offences:
        return None
    extradition = request.type in _EXTRADITION
    element = "44(1)-dual-criminality" if extradition else "46(9)"
    label = "dual criminality: offences every state party must criminalise"
    optional = sorted({o.article for o in request.offences if not o.article.mandatory}, key=list(OffenceArticle).index)
    if not optional:
        return _item(element, label, blocking=False)
    listed = ", ".join(f"art. {article.value} ({article.label})" for article in optional)
    consequence = (
        "extradition may be refused without dual criminality (art. 44(1); 44(2) lets a state waive it)"
        if extradition
        else "assistance may be declined without dual criminality, though non-coercive assistance should still be"
        " given (art. 46(9)(b))"
    )
    advice = (
        f"{listed}: the Convention does not oblige states to criminalise this; {consequence}. Describe the conduct"
        " fully: dual criminality turns on the conduct, not on the name of the offence (art. 43(2))"
    )
    return _item(element, label, blocking=False, soft=[advice])


def _person_sought(request: Request) -> list[ChecklistItem]:
    sought = [p for p in request.persons if p.role is PersonRole.PERSON_SOUGHT]
    hard = []
    if not sought:
        hard.append("the person sought (a person with role 'person-sought')")
    for index, person in enumerate(sought, start=1):
        if _blank(person.name):
            hard.append(f"person sought {index}: name")
        if _blank(person.date_of_birth) and _blank(person.identifiers):
            hard.append(f"person sought {index}: date of birth or identity document numbers")
        if _blank(person.location):
            hard.append(f"person sought {index}: location in the requested state")
    items = [
        _item("44(1)", "the person sought, identified and located in the requested state", blocking=True, hard=hard)
    ]
    stateless = [f"person sought {i}" for i, p in enumerate(sought, start=1) if _blank(p.nationality)]
    soft = [f"{', '.join(stateless)}: nationality (a state that will not surrender its nationals must prosecute)"]
    items.append(_item("44(11)", "nationality of the person sought", blocking=False, soft=soft if stateless else []))
    no_penalty = [
        f"offence {i} (art. {o.article.value})" for i, o in enumerate(request.offences, 1) if _blank(o.maximum_penalty)
    ]
    soft = [f"{', '.join(no_penalty)}: the maximum penalty (the requested state may require a minimum one)"]
    items.append(_item("44(8)", "penalties for the offences", blocking=False, soft=soft if no_penalty else []))
    if request.type is RequestType.PROVISIONAL_ARREST:
        hard = [] if request.urgent and not _blank(request.urgency_reasons) else ["urgent: true and the reasons for it"]
        items.append(_item("44(10)", "urgency that warrants provisional arrest", blocking=True, hard=hard))
    return items


# --- articles 55 and 57 -------------------------------------------------------------------------------------------


def _properties(assets: AssetDetails, *, required: bool) -> tuple[list[str], list[str]]:
    """Problems with the property list: a description blocks; location "to the extent possible" and value "where
    relevant" only warn (art. 55(3)(a))."""
    hard: list[str] = [] if assets.properties or not required else ["at least one property: its description"]
    soft: list[str] = []
    for index, item in enumerate(assets.properties, start=1):
        if _blank(item.description):
            hard.append(f"property {index}: description")
        if _blank(item.location):
            soft.append(f"property {index}: location (to the extent possible)")
        if _blank(item.estimated_value):
            soft.append(f"property {index}: estimated value (where relevant)")
    return hard, soft


def _asset_recovery(request: Request) -> list[ChecklistItem]:
    assets = request.assets or AssetDetails()
    if request.type is RequestType.FREEZING:
        hard, soft = _properties(assets, required=True)
        if _blank(assets.order) or _blank(assets.order_attachment):
            soft.append(
                "the order the request rests on and a legally admissible copy as an attachment, where available"
            )
        return [
            _item(
                "55(3)(c)",
                "freezing or seizure (art. 55(2)): the property and the action requested",
                blocking=True,
                hard=hard,
                soft=soft,
            )
        ]
    if request.type is RequestType.CONFISCATION:
        if assets.confiscation_route is None:
            what = "confiscation_route: 'domestic-order' (art. 55(1)(a)) or 'foreign-order' (art. 55(1)(b))"
            return [_item("55(1)", "confiscation under art. 55(1)(a) or (b)", blocking=True, hard=[what])]
        if assets.confiscation_route == "domestic-order":
            hard, soft = _properties(assets, required=True)
            return [
                _item(
                    "55(3)(a)",
                    "confiscation by an order of the requested state (art. 55(1)(a))",
                    blocking=True,
                    hard=hard,
                    soft=soft,
                )
            ]
        hard, soft = _properties(assets, required=False)  # 55(3)(b): the order defines the property
        if _blank(assets.order):
            hard.append("the confiscation order: court, date and number")
        if _blank(assets.order_attachment):
            hard.append("a legally admissible copy of the order, named in order_attachment")
        if _blank(assets.extent_of_execution):
            hard.append("the extent to which execution of the order is requested")
        if _blank(assets.third_party_measures):
            hard.append("the measures taken to notify bona fide third parties and to ensure due process")
        if not assets.order_final:
            hard.append("a statement that the order is final (order_final: true)")
        return [
            _item(
                "55(3)(b)",
                "confiscation by giving effect to the requesting state's order (art. 55(1)(b))",
                blocking=True,
                hard=hard,
                soft=soft,
            )
        ]
    # return of assets
    hard = []
    soft = []
    if assets.return_ground is None:
        hard.append("return_ground: 57(3)(a) embezzled public funds, (b) other proceeds, or (c) other cases")
    if _blank(assets.confiscation_reference):
        hard.append("the confiscation in the requested state (art. 55) the return follows")
    if assets.return_ground == "57(3)(b)" and _blank(assets.prior_ownership_or_damage):
        hard.append("how prior ownership of the property, or the damage, is established")
    if assets.return_ground in ("57(3)(a)", "57(3)(b)") and not assets.order_final:
        soft.append("the final judgment in the requesting state (order_final), unless the requested state waives it")
    offences = {o.article for o in request.offences}
    if assets.return_ground == "57(3)(a)" and not offences & {OffenceArticle.A17, OffenceArticle.A23}:
        soft.append("57(3)(a) covers embezzlement of public funds (art. 17) or its laundering (art. 23)")
    return [_item("57(3)", "return of confiscated property", blocking=True, hard=hard, soft=soft)]


# --- legal basis, timing, confidentiality ---------------------------------------------------------------------------


def _legal_basis(request: Request) -> ChecklistItem:
    label = "legal basis: a UNCAC article, a treaty by name, or reciprocity and domestic law"
    # Where extradition depends on a treaty, the requested state must know whether the Convention is that treaty
    # (art. 44(5) to (7)); for assistance the basis decides which rules govern (art. 46(7)), so it only warns.
    blocking = request.type in _EXTRADITION
    basis = request.legal_basis
    if basis is None:
        return _item("legal-basis", label, blocking=blocking, hard=["the legal basis (legal_basis)"])
    if isinstance(basis, UncacBasis) and basis.article not in _BASIS_ARTICLES[request.type]:
        fitting = ", ".join(str(article) for article in sorted(_BASIS_ARTICLES[request.type]))
        soft = [f"UNCAC article {basis.article} does not govern {request.type.value} requests; cite article {fitting}"]
        return _item("legal-basis", label, blocking=blocking, soft=soft)
    return _item("legal-basis", label, blocking=blocking)


def _timing(request: Request) -> ChecklistItem | None:
    if request.type is RequestType.PROVISIONAL_ARREST and request.deadline is None:
        return None  # urgency is a blocking element of its own (44(10))
    if not request.urgent and request.deadline is None:
        return None
    soft = []
    if request.urgent and _blank(request.urgency_reasons) and request.type is not RequestType.PROVISIONAL_ARREST:
        soft.append("the reasons for urgency")
    if request.deadline is not None and _blank(request.deadline.reasons):
        soft.append("the reasons for the suggested deadline: a deadline without reasons need not be considered")
    return _item("46(24)", "urgency and suggested deadline, with reasons", blocking=False, soft=soft)


def _confidentiality(request: Request) -> ChecklistItem | None:
    label = "confidentiality of the fact and substance of the request"
    covert = request.type in (RequestType.FREEZING, RequestType.CONFISCATION, RequestType.PROVISIONAL_ARREST) or bool(
        set(request.assistance_sought) & _COVERT
    )
    if request.confidentiality_requested:
        return _item("46(20)", label, blocking=False)
    if covert:
        soft = ["ask for confidentiality (confidentiality_requested) so the persons concerned are not alerted first"]
        return _item("46(20)", label, blocking=False, soft=soft)
    return None


def _marking(request: Request, caveats: Iterable[str] | None) -> ChecklistItem | None:
    """The caveats the request's own asks need on its marking (decision 85): missing ones block when the marking's
    caveat names are known (``caveats``); when they are not (a file checked alone, a shared draft), a warning says
    what the send will require."""
    needed = required_caveats(request)
    if not needed:
        return None
    label = "the marking carries the caveats for what the request asks (art. 46(19), 46(20))"
    held = None if caveats is None else set(caveats)
    asks = [
        f"mark it with the caveat {caveat}: the request {CAVEAT_ASKS[caveat]}"
        for caveat in needed
        if held is None or caveat not in held
    ]
    if held is None:
        return _item("marking", label, blocking=True, soft=asks)
    return _item("marking", label, blocking=True, hard=asks)


def _de_minimis(request: Request) -> ChecklistItem | None:
    if not request.de_minimis:
        return None
    soft = ["the requested state may decline a de minimis matter: weigh whether the request is worth sending"]
    return _item("46(9)(b)", "a matter of minor importance", blocking=False, soft=soft)


# --- the recipient's requirements ---------------------------------------------------------------------------------


def language_accepted(tag: str, accepted: Iterable[str]) -> bool:
    """True when ``tag`` falls under one of the ``accepted`` BCP 47 tags (RFC 4647 section 3.3.1 basic filtering:
    ``pt`` accepts ``pt-BR``, ``pt-BR`` does not accept ``pt``). Comparison ignores case."""
    tag = tag.lower()
    return any(tag == a.lower() or tag.startswith(a.lower() + "-") for a in accepted if a)


def _language(request: Request, recipient: RecipientRequirements | None) -> ChecklistItem:
    label = "a language the requested state accepts"
    offered = [tag for tag in (request.language, *request.translations) if tag]
    if recipient is None or not recipient.languages:
        soft = [] if offered else ["the language the request is written in (language)"]
        soft.append("not checked against the recipient's accepted languages: give the recipient's directory entry")
        return _item("46(14)", label, blocking=False, soft=soft)
    if any(language_accepted(tag, recipient.languages) for tag in offered):
        return _item("46(14)", label, blocking=True)
    what = f"write the request in, or attach a translation into, one of {', '.join(recipient.languages)}"
    if not request.language:
        what += "; and state the language it is written in (language)"
    return _item("46(14)", label, blocking=True, hard=[what])


def _designation(request: Request, recipient: RecipientRequirements | None) -> ChecklistItem | None:
    if recipient is None or not recipient.roles:
        return None
    expected = _ROLES.get(request.type, _DEFAULT_ROLES)
    label = "the recipient is designated for this type of request"
    if set(recipient.roles) & expected:
        return _item("46(13)", label, blocking=False)
    soft = [
        f"the recipient is not listed as {' or '.join(sorted(expected))}: confirm it handles {request.type.value}"
        " requests, or address the authority designated for them"
    ]
    return _item("46(13)", label, blocking=False, soft=soft)


def _notes(recipient: RecipientRequirements | None) -> ChecklistItem | None:
    if recipient is None or _blank(recipient.notes):
        return None
    soft = [f"the recipient's directory notes: {' '.join(recipient.notes.split())}"]
    return _item("recipient-notes", "requirements the recipient publishes in the directory", blocking=False, soft=soft)


# --- the order of the rules ---------------------------------------------------------------------------------------


def checklist_items(
    request: Request, recipient: RecipientRequirements | None = None, caveats: Iterable[str] | None = None
) -> tuple[ChecklistItem, ...]:
    """Every rule's item for ``request``, in the order they are reported (rules that do not apply give none).
    ``caveats``: the caveat names of the marking it will be sent under, if known."""
    items: list[ChecklistItem | None] = [
        _requesting_authority(request),
        _proceeding(request),
        _offences(request),
        _facts(request),
        _assistance(request),
        _persons(request),
        _purpose(request),
        _dual_criminality(request),
    ]
    if request.type in _EXTRADITION:
        items.extend(_person_sought(request))
    if request.type in _ASSETS:
        items.extend(_asset_recovery(request))
    items += [
        _legal_basis(request),
        _timing(request),
        _confidentiality(request),
        _marking(request, caveats),
        _de_minimis(request),
        _language(request, recipient),
        _designation(request, recipient),
        _notes(recipient),
    ]
    return tuple(item for item in items if item is not None)
