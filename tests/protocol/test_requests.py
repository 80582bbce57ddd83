"""The request model: JSON round trip through canonical JSON, strict shape, enums tied to the Convention."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.request import example_request
from protocol.errors import InvalidMessage
from protocol.messages import MessagePayload, canonical_json, parse_strict_json
from protocol.requests import (
    MANDATORY_OFFENCES,
    AssistanceSought,
    OffenceArticle,
    ReciprocityBasis,
    Request,
    RequestType,
    TreatyBasis,
    UncacBasis,
    blank_request,
    required_caveats,
)


@pytest.mark.parametrize("request_type", list(RequestType))
def test_blank_and_example_round_trip_through_canonical_json(request_type: RequestType) -> None:
    for model in (blank_request(request_type), example_request(request_type)):
        data = canonical_json(model.to_json())
        assert Request.parse(parse_strict_json(data)) == model


def test_request_fits_in_a_message_payload() -> None:
    request = example_request(RequestType.MLA_CRIMINAL)
    payload = MessagePayload.parse(
        {
            "id": "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b",
            "from": "ar.mj",
            "to": "es.mj",
            "kind": "request",
            "iat": 1_800_000_000,
            "marking": {"level": "CONFIDENTIAL", "caveats": list(required_caveats(request))},
            "content": {"request": request.to_json()},
        }
    )
    again = MessagePayload.from_bytes(payload.to_bytes())
    assert Request.parse(again.content["request"]) == request


def test_assistance_enum_follows_article_46_3_in_order() -> None:
    assert [a.article for a in AssistanceSought] == [f"46(3)({letter})" for letter in "abcdefghijk"]
    assert AssistanceSought.SERVICE_OF_DOCUMENTS.article == "46(3)(b)"
    assert AssistanceSought.CHAPTER_V_RECOVERY.article == "46(3)(k)"
    assert "bank" in AssistanceSought.DOCUMENTS_RECORDS.label


def test_mandatory_offences_are_those_the_convention_says_shall_be_established() -> None:
    assert {a.value for a in MANDATORY_OFFENCES} == {"15", "16(1)", "17", "23", "25"}
    assert not OffenceArticle.A18.mandatory
    assert OffenceArticle.A18.label == "trading in influence"
    assert len(OffenceArticle) == 12  # 15 to 25, with 16 split into its two paragraphs


def test_legal_basis_is_a_tagged_union() -> None:
    def with_basis(basis: dict[str, Any]) -> Request:
        return Request.parse({"type": "mla-criminal", "legal_basis": basis})

    assert with_basis({"kind": "uncac", "article": 46, "paragraph": "9(b)"}).legal_basis == UncacBasis(
        article=46, paragraph="9(b)"
    )
    assert isinstance(with_basis({"kind": "treaty", "name": "Inter-American Convention"}).legal_basis, TreatyBasis)
    basis = with_basis({"kind": "reciprocity", "domestic_law": "Law 24.767"}).legal_basis
    assert isinstance(basis, ReciprocityBasis)
    with pytest.raises(InvalidMessage, match="legal_basis"):
        with_basis({"kind": "comity"})
    with pytest.raises(InvalidMessage, match=r"legal_basis\.uncac\.article"):
        with_basis({"kind": "uncac", "article": 12})  # chapter II is no basis for cooperation
    with pytest.raises(InvalidMessage, match=r"legal_basis\.treaty\.name"):
        with_basis({"kind": "treaty", "name": ""})


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"type": "letters-rogatory"}, "type"),
        ({"unexpected": 1}, r"\(member\)"),  # a name outside the schema is not echoed: it may be content
        ({"assistance_sought": ["taking-evidence", "taking-evidence"]}, "assistance_sought"),
        ({"assistance_sought": ["espionage"]}, "assistance_sought.0"),
        ({"offences": [{"article": "26"}]}, "offences.0.article"),
        ({"language": "Spanish"}, "language"),
        ({"translations": ["en", "en"]}, "translations"),
        ({"deadline": {"date": "15/01/2027", "reasons": "trial"}}, "deadline.date"),
        ({"persons": [{"role": "suspect", "date_of_birth": "1970-02-30"}]}, "persons.0.date_of_birth"),
        ({"consultation_id": "not-a-uuid"}, "consultation_id"),
        ({"v": 2}, "v"),
        ({"confidentiality_requested": "yes"}, "confidentiality_requested"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    document = {"type": "mla-criminal", **change}
    with pytest.raises(InvalidMessage, match=rf"^Request: {where}:"):
        Request.parse(document)


def test_required_caveats_follow_articles_46_19_and_46_20() -> None:
    request = blank_request(RequestType.MLA_CRIMINAL)
    assert required_caveats(request) == ()
    marked = request.model_copy(update={"confidentiality_requested": True, "use_limitation": "Only case 42/2026"})
    assert required_caveats(marked) == ("uncac-46-19", "uncac-46-20")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=12), c),
        max_leaves=20,
    )
)
def test_garbage_gives_invalid_message_never_a_crash(document: Any) -> None:
    with contextlib.suppress(InvalidMessage):
        Request.parse(document)


@given(st.dictionaries(st.sampled_from(list(Request.model_fields)), st.text(max_size=3) | st.none() | st.booleans()))
def test_garbage_members_give_invalid_message(members: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidMessage):
        parsed = Request.parse({"type": "extradition", **members})
        assert Request.parse(parsed.to_json()) == parsed
