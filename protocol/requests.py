"""The request model: what a mutual legal assistance, extradition or asset-recovery request carries.

A :class:`Request` is the substance of a request and travels as ``MessagePayload.content["request"]``
(:meth:`Request.to_json`). The whole model is content: the summary of facts, the persons concerned and the offences
are confidential and belong in the encrypted payload only, never in a ledger event, a log line or an error message.

The model is deliberately permissive about *missing* substance (empty strings, empty lists): a draft parses, and
:mod:`protocol.checklist` says what is missing and which article asks for it. It is strict about *shape*: unknown
members, wrong types, unknown enum values and malformed dates are refused by :meth:`StrictModel.parse`.
"""

from __future__ import annotations

import enum
import re
from datetime import date
from typing import Annotated, Any, Final, Literal

from pydantic import Field, Strict, field_validator

from protocol.errors import InvalidMessage
from protocol.markings import CONFIDENTIALITY_CAVEAT, USE_LIMITATION_CAVEAT
from protocol.messages import StrictModel, validate_message_id

__all__ = [
    "MANDATORY_OFFENCES",
    "REQUEST_VERSION",
    "AssetDetails",
    "AssistanceSought",
    "Deadline",
    "LegalBasis",
    "Offence",
    "OffenceArticle",
    "PersonConcerned",
    "PersonRole",
    "Proceeding",
    "ProceedingNature",
    "Property",
    "ReciprocityBasis",
    "Request",
    "RequestType",
    "RequestingAuthority",
    "TreatyBasis",
    "UncacBasis",
    "blank_request",
    "CAVEAT_ASKS",
    "required_caveats",
]

REQUEST_VERSION: Final = 1
_SHORT: Final = 500
_LONG: Final = 100_000
_LANGUAGE_RE: Final = re.compile(
    r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?(-([a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*$"
)


class RequestType(enum.StrEnum):
    MLA_CRIMINAL = "mla-criminal"  # art. 46
    MLA_CIVIL_ADMINISTRATIVE = "mla-civil-administrative"  # art. 43(1), 46 by analogy
    EXTRADITION = "extradition"  # art. 44
    PROVISIONAL_ARREST = "provisional-arrest"  # art. 44(10)
    FREEZING = "freezing"  # art. 54(2), 55(2)
    CONFISCATION = "confiscation"  # art. 54(1), 55(1)
    RETURN_OF_ASSETS = "return-of-assets"  # art. 57
    SERVICE_OF_DOCUMENTS = "service-of-documents"  # art. 46(3)(b)
    SPONTANEOUS_INFORMATION = "spontaneous-information"  # art. 46(4)

    @property
    def label(self) -> str:
        return _TYPE_LABELS[self]


_TYPE_LABELS: Final = {
    RequestType.MLA_CRIMINAL: "mutual legal assistance in criminal matters",
    RequestType.MLA_CIVIL_ADMINISTRATIVE: "mutual legal assistance in civil or administrative matters",
    RequestType.EXTRADITION: "extradition",
    RequestType.PROVISIONAL_ARREST: "provisional arrest with a view to extradition",
    RequestType.FREEZING: "freezing or seizure of property",
    RequestType.CONFISCATION: "confiscation of property",
    RequestType.RETURN_OF_ASSETS: "return of assets",
    RequestType.SERVICE_OF_DOCUMENTS: "service of judicial documents",
    RequestType.SPONTANEOUS_INFORMATION: "spontaneous information",
}


class AssistanceSought(enum.StrEnum):
    """Article 46(3)(a) to (k): the assistance that may be requested."""

    TAKING_EVIDENCE = "taking-evidence"
    SERVICE_OF_DOCUMENTS = "service-of-documents"
    SEARCH_SEIZURE_FREEZING = "search-seizure-freezing"
    EXAMINING_OBJECTS_SITES = "examining-objects-sites"
    INFORMATION_EVIDENCE_EXPERTS = "information-evidence-experts"
    DOCUMENTS_RECORDS = "documents-records"
    TRACING_PROCEEDS = "tracing-proceeds"
    VOLUNTARY_APPEARANCE = "voluntary-appearance"
    OTHER = "other"
    CHAPTER_V_IDENTIFY_FREEZE_TRACE = "chapter-v-identify-freeze-trace"
    CHAPTER_V_RECOVERY = "chapter-v-recovery"

    @property
    def article(self) -> str:
        return f"46(3)({'abcdefghijk'[list(AssistanceSought).index(self)]})"

    @property
    def label(self) -> str:
        return _ASSISTANCE_LABELS[self]


_ASSISTANCE_LABELS: Final = {
    AssistanceSought.TAKING_EVIDENCE: "taking evidence or statements from persons",
    AssistanceSought.SERVICE_OF_DOCUMENTS: "effecting service of judicial documents",
    AssistanceSought.SEARCH_SEIZURE_FREEZING: "executing searches and seizures, and freezing",
    AssistanceSought.EXAMINING_OBJECTS_SITES: "examining objects and sites",
    AssistanceSought.INFORMATION_EVIDENCE_EXPERTS: "providing information, evidentiary items and expert evaluations",
    AssistanceSought.DOCUMENTS_RECORDS: (
        "providing originals or certified copies of documents and records, including government, bank, financial,"
        " corporate or business records"
    ),
    AssistanceSought.TRACING_PROCEEDS: (
        "identifying or tracing proceeds of crime, property, instrumentalities or other things for evidentiary purposes"
    ),
    AssistanceSought.VOLUNTARY_APPEARANCE: "facilitating the voluntary appearance of persons in the requesting state",
    AssistanceSought.OTHER: "any other type of assistance not contrary to the requested state's domestic law",
    AssistanceSought.CHAPTER_V_IDENTIFY_FREEZE_TRACE: "identifying, freezing and tracing proceeds of crime (chapter V)",
    AssistanceSought.CHAPTER_V_RECOVERY: "the recovery of assets (chapter V)",
}


class OffenceArticle(enum.StrEnum):
    """The offences of articles 15 to 25."""

    A15 = "15"
    A16_1 = "16(1)"
    A16_2 = "16(2)"
    A17 = "17"
    A18 = "18"
    A19 = "19"
    A20 = "20"
    A21 = "21"
    A22 = "22"
    A23 = "23"
    A24 = "24"
    A25 = "25"

    @property
    def label(self) -> str:
        return _OFFENCE_LABELS[self]

    @property
    def mandatory(self) -> bool:
        """True when the Convention obliges every state party to criminalise the conduct ("shall adopt")."""
        return self in MANDATORY_OFFENCES


_OFFENCE_LABELS: Final = {
    OffenceArticle.A15: "bribery of national public officials",
    OffenceArticle.A16_1: (
        "active bribery of foreign public officials and officials of public international organizations"
    ),
    OffenceArticle.A16_2: (
        "passive bribery of foreign public officials and officials of public international organizations"
    ),
    OffenceArticle.A17: "embezzlement, misappropriation or other diversion of property by a public official",
    OffenceArticle.A18: "trading in influence",
    OffenceArticle.A19: "abuse of functions",
    OffenceArticle.A20: "illicit enrichment",
    OffenceArticle.A21: "bribery in the private sector",
    OffenceArticle.A22: "embezzlement of property in the private sector",
    OffenceArticle.A23: "laundering of proceeds of crime",
    OffenceArticle.A24: "concealment",
    OffenceArticle.A25: "obstruction of justice",
}

# Articles 15, 16(1), 17, 23 and 25 say "shall adopt"; the others say "shall consider adopting", so the requested
# state may not have the offence at all (a dual-criminality risk, art. 44(1) and 46(9)).
MANDATORY_OFFENCES: Final = frozenset(
    {OffenceArticle.A15, OffenceArticle.A16_1, OffenceArticle.A17, OffenceArticle.A23, OffenceArticle.A25}
)


class ProceedingNature(enum.StrEnum):
    INVESTIGATION = "investigation"
    PROSECUTION = "prosecution"
    JUDICIAL_PROCEEDING = "judicial-proceeding"
    ENFORCEMENT_OF_SENTENCE = "enforcement-of-sentence"
    CIVIL_PROCEEDING = "civil-proceeding"
    ADMINISTRATIVE_PROCEEDING = "administrative-proceeding"


class PersonRole(enum.StrEnum):
    SUSPECT = "suspect"
    ACCUSED = "accused"
    CONVICTED = "convicted"
    PERSON_SOUGHT = "person-sought"  # extradition, provisional arrest
    WITNESS = "witness"
    VICTIM = "victim"
    ADDRESSEE = "addressee"  # of documents to be served
    ACCOUNT_HOLDER = "account-holder"
    LEGAL_PERSON = "legal-person"  # art. 26
    OTHER = "other"


_Lax = Strict(False)  # enums arrive as JSON strings; StrictModel would otherwise want enum instances
_Short = Annotated[str, Field(max_length=_SHORT)]
_Long = Annotated[str, Field(max_length=_LONG)]


def _check_language(value: str) -> str:
    if value and not _LANGUAGE_RE.fullmatch(value):
        raise ValueError("must be a BCP 47 language tag such as 'es', 'en' or 'pt-BR'")
    return value


# --- legal basis (tagged union on "kind") -------------------------------------------------------------------------


class UncacBasis(StrictModel):
    """The Convention itself: an article of chapter IV or V (43 to 59) and, optionally, a paragraph like ``9(b)``."""

    kind: Literal["uncac"] = "uncac"
    article: int = Field(ge=43, le=59)
    paragraph: str = Field(default="", max_length=20, pattern=r"^([0-9]{1,2}(\([a-z]{1,4}\)){0,2})?$")


class TreatyBasis(StrictModel):
    """A bilateral or regional treaty, by name (and article, if useful)."""

    kind: Literal["treaty"] = "treaty"
    name: str = Field(min_length=1, max_length=_SHORT)
    article: _Short = ""


class ReciprocityBasis(StrictModel):
    """No treaty: reciprocity and the requested (or requesting) state's domestic law, named."""

    kind: Literal["reciprocity"] = "reciprocity"
    domestic_law: str = Field(min_length=1, max_length=_SHORT)


LegalBasis = Annotated[UncacBasis | TreatyBasis | ReciprocityBasis, Field(discriminator="kind")]


# --- parts --------------------------------------------------------------------------------------------------------


class RequestingAuthority(StrictModel):
    """Art. 46(15)(a): who asks. ``authority_id`` is the directory id when the authority has one."""

    name: _Short = ""
    authority_id: _Short = ""
    contact: _Short = ""  # the officer in charge: name, telephone, e-mail


class Proceeding(StrictModel):
    """Art. 46(15)(b): the subject matter and nature of the proceeding, and who conducts it with what functions."""

    nature: Annotated[ProceedingNature, _Lax] | None = None
    subject_matter: _Long = ""
    conducting_authority: _Short = ""
    conducting_authority_functions: _Short = ""
    reference: _Short = ""  # the case number at the conducting authority


class Offence(StrictModel):
    """An offence of articles 15 to 25 with the requesting state's own description (needed for dual criminality)."""

    article: Annotated[OffenceArticle, _Lax]
    national_description: _Short = ""  # the provision of national law and its name
    maximum_penalty: _Short = ""  # art. 44(8): some states require a minimum penalty for extradition


class PersonConcerned(StrictModel):
    """Art. 46(15)(e): a person concerned, identified as far as possible."""

    role: Annotated[PersonRole, _Lax]
    name: _Short = ""
    date_of_birth: _Short = ""
    nationality: _Short = ""
    location: _Short = ""  # address or last known whereabouts
    identifiers: _Short = ""  # passport, national identity or company registration numbers

    @field_validator("date_of_birth")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        return _check_date(value)


class Deadline(StrictModel):
    """Art. 46(24): a suggested deadline, with the reasons for it."""

    date: str
    reasons: _Long = ""

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        if not value:
            raise ValueError("a deadline needs a date (YYYY-MM-DD)")
        return _check_date(value)


class Property(StrictModel):
    """Art. 55(3)(a): property to be frozen, seized or confiscated."""

    description: _Short = ""
    location: _Short = ""
    estimated_value: _Short = ""  # "USD 1 200 000": text, so no float reaches canonical JSON


class AssetDetails(StrictModel):
    """What articles 55(3) and 57(3) add for freezing, confiscation and return of assets."""

    properties: list[Property] = Field(default_factory=list, max_length=1000)
    # 55(1)(a): the requested state is asked to obtain its own order; 55(1)(b): to give effect to our order
    confiscation_route: Literal["domestic-order", "foreign-order"] | None = None
    order: _Short = ""  # the order relied on, by court, date and number
    order_attachment: _Short = ""  # the name of the legally admissible copy in the attachment manifest
    extent_of_execution: _Long = ""  # 55(3)(b)
    third_party_measures: _Long = ""  # 55(3)(b): notice to bona fide third parties and due process
    order_final: bool = False  # 55(3)(b)
    return_ground: Literal["57(3)(a)", "57(3)(b)", "57(3)(c)"] | None = None
    confiscation_reference: _Short = ""  # 57(3): the confiscation in the requested state the return follows
    prior_ownership_or_damage: _Long = ""  # 57(3)(b)


def _check_date(value: str) -> str:
    if not value:
        return value
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date written YYYY-MM-DD") from None
    if parsed.isoformat() != value:
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


# --- the request --------------------------------------------------------------------------------------------------


class Request(StrictModel):
    """A request (or, for ``spontaneous-information``, a transmission under art. 46(4)). All of it is content."""

    v: int = REQUEST_VERSION
    type: Annotated[RequestType, _Lax]
    requesting_authority: RequestingAuthority = Field(default_factory=RequestingAuthority)
    legal_basis: LegalBasis | None = None
    proceeding: Proceeding = Field(default_factory=Proceeding)
    offences: list[Offence] = Field(default_factory=list, max_length=100)
    assistance_sought: list[Annotated[AssistanceSought, _Lax]] = Field(default_factory=list, max_length=11)
    other_assistance: _Long = ""  # what 46(3)(i) "any other type of assistance" means here
    procedures: _Long = ""  # 46(15)(d), 46(17): particular procedures to follow, e.g. a videoconference (46(18))
    persons: list[PersonConcerned] = Field(default_factory=list, max_length=1000)
    summary_of_facts: _Long = ""
    purpose: _Long = ""
    urgent: bool = False
    urgency_reasons: _Long = ""
    deadline: Deadline | None = None
    confidentiality_requested: bool = False  # 46(20): keep the fact and substance of the request confidential
    use_limitation: _Long = ""  # 46(19) and, for spontaneous information, 46(5): conditions on use
    language: _Short = ""  # BCP 47 tag of the language the request is written in
    translations: list[str] = Field(default_factory=list, max_length=32)  # BCP 47 tags of attached translations
    de_minimis: bool = False  # the requesting authority itself considers the matter minor (46(9)(b))
    consultation_id: str | None = None  # message id of the consultation this request came from, if any
    assets: AssetDetails | None = None

    @field_validator("v")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != REQUEST_VERSION:
            raise ValueError(f"unsupported request version, expected {REQUEST_VERSION}")
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return _check_language(value)

    @field_validator("translations")
    @classmethod
    def _translations(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("translations must be unique")
        for tag in value:
            if not tag:
                raise ValueError("translations must be BCP 47 tags such as 'es', 'en' or 'pt-BR'")
            _check_language(tag)
        return value

    @field_validator("assistance_sought")
    @classmethod
    def _unique_assistance(cls, value: list[AssistanceSought]) -> list[AssistanceSought]:
        if len(set(value)) != len(value):
            raise ValueError("assistance_sought must not repeat an item")
        return value

    @field_validator("consultation_id")
    @classmethod
    def _consultation(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_message_id(value)
        except InvalidMessage:  # pydantic wants a ValueError
            raise ValueError("consultation_id must be a message id (a lowercase version-4 UUID)") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object to place in ``MessagePayload.content["request"]``; :meth:`parse` reads it back."""
        return self.model_dump(mode="json")


# what a request asks, by the caveat the message carrying it must bear for that (the words of a refusal)
CAVEAT_ASKS: Final = {
    CONFIDENTIALITY_CAVEAT: "asks for confidentiality (UNCAC art. 46(20))",
    USE_LIMITATION_CAVEAT: "states a use limitation (UNCAC art. 46(19))",
}


def required_caveats(request: Request) -> tuple[str, ...]:
    """The marking caveats (protocol.markings) the message carrying ``request`` must bear, sorted.

    ``uncac-46-20`` when the requesting authority asks for confidentiality (art. 46(20)); ``uncac-46-19`` when it
    states a use limitation (art. 46(19), and 46(5) for spontaneous information).
    """
    caveats = []
    if request.confidentiality_requested:
        caveats.append(CONFIDENTIALITY_CAVEAT)
    if request.use_limitation.strip():
        caveats.append(USE_LIMITATION_CAVEAT)
    return tuple(sorted(caveats))


def blank_request(request_type: RequestType) -> Request:
    """An empty request of ``request_type`` to fill in: every member present, none filled.

    Asset-recovery types get an empty :class:`AssetDetails` (with one empty property) so the template shows its
    members; the others get one empty offence and one empty person for the same reason.
    """
    assets = None
    if request_type in (RequestType.FREEZING, RequestType.CONFISCATION, RequestType.RETURN_OF_ASSETS):
        assets = AssetDetails(properties=[Property()])
    role = PersonRole.PERSON_SOUGHT if request_type in _EXTRADITION_TYPES else PersonRole.SUSPECT
    if request_type is RequestType.SERVICE_OF_DOCUMENTS:
        role = PersonRole.ADDRESSEE
    return Request(
        type=request_type,
        offences=[Offence(article=OffenceArticle.A15)],
        persons=[PersonConcerned(role=role)],
        assets=assets,
    )


_EXTRADITION_TYPES: Final = frozenset({RequestType.EXTRADITION, RequestType.PROVISIONAL_ARREST})
