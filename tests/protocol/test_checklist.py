"""The completeness checker: each rule with its article, blocking or warning, and the recipient's requirements."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.cli.request import example_request
from protocol.checklist import (
    Checklist,
    IncompleteRequest,
    ItemStatus,
    RecipientRequirements,
    check_request,
    language_accepted,
    require_complete,
)
from protocol.errors import ProtocolError
from protocol.requests import (
    AssetDetails,
    Deadline,
    Offence,
    OffenceArticle,
    PersonConcerned,
    PersonRole,
    Proceeding,
    Property,
    Request,
    RequestingAuthority,
    RequestType,
    UncacBasis,
    blank_request,
)

SPAIN = RecipientRequirements(languages=("es",), notes="", roles=("mla-central-authority",))


def changed(request_type: RequestType, **update: Any) -> Request:
    """The complete example of ``request_type`` with ``update`` applied, re-validated."""
    document = {**example_request(request_type).to_json(), **update}
    return Request.parse(document)


def status(checklist: Checklist, element: str) -> ItemStatus:
    return checklist.item(element).status


def blocking_ids(checklist: Checklist) -> list[str]:
    return [item.element for item in checklist.blocking]


@pytest.mark.parametrize("request_type", list(RequestType))
def test_every_example_is_complete_for_a_recipient_that_reads_spanish(request_type: RequestType) -> None:
    checklist = check_request(example_request(request_type), SPAIN)
    assert checklist.complete, checklist.render()
    assert status(checklist, "46(14)") is ItemStatus.PRESENT


@pytest.mark.parametrize("request_type", list(RequestType))
def test_every_blank_request_is_blocked(request_type: RequestType) -> None:
    checklist = check_request(blank_request(request_type))
    assert {"46(15)(a)", "46(15)(b)", "46(15)(c)"} & set(blocking_ids(checklist))
    with pytest.raises(IncompleteRequest, match=f"the {request_type.value} request is incomplete: missing 46"):
        require_complete(checklist)


@pytest.mark.parametrize(
    ("update", "element", "what"),
    [
        ({"requesting_authority": RequestingAuthority().model_dump()}, "46(15)(a)", "name of the requesting authority"),
        ({"proceeding": Proceeding().model_dump()}, "46(15)(b)", "nature of the proceeding"),
        ({"summary_of_facts": "  "}, "46(15)(c)", "summary of the facts"),
        ({"assistance_sought": []}, "46(15)(d)", r"one or more of art\. 46\(3\)\(a\) to \(k\)"),
        ({"assistance_sought": ["other"]}, "46(15)(d)", "other_assistance"),
        ({"purpose": ""}, "46(15)(f)", "purpose"),
        ({"offences": []}, "offences", "at least one offence"),
        ({"offences": [{"article": "17"}]}, "offences", r"offence 1 \(art\. 17\): the provision of your law"),
    ],
)
def test_article_46_15_elements_block_a_criminal_request(update: dict[str, Any], element: str, what: str) -> None:
    checklist = check_request(changed(RequestType.MLA_CRIMINAL, **update), SPAIN)
    assert blocking_ids(checklist) == [element]
    item = checklist.item(element)
    assert item.blocking
    assert item.status is ItemStatus.MISSING
    assert item.what_to_add
    with pytest.raises(IncompleteRequest, match=rf"missing {re.escape(element)};"):
        require_complete(checklist)
    assert re.search(what, item.what_to_add), item.what_to_add


def test_persons_concerned_only_warn_where_not_possible() -> None:
    checklist = check_request(changed(RequestType.MLA_CRIMINAL, persons=[]), SPAIN)
    assert checklist.complete
    item = checklist.item("46(15)(e)")
    assert (item.status, item.blocking) == (ItemStatus.WARNING, False)
    unlocated = changed(RequestType.MLA_CRIMINAL, persons=[{"role": "witness", "name": "W"}])
    assert "person 1 (witness): location, nationality" in check_request(unlocated).item("46(15)(e)").what_to_add
    company = changed(RequestType.MLA_CRIMINAL, persons=[{"role": "legal-person", "name": "X SA", "location": "Lima"}])
    assert status(check_request(company), "46(15)(e)") is ItemStatus.PRESENT  # a company has no nationality field


def test_service_of_documents_needs_no_facts_but_needs_the_addressee() -> None:
    request = changed(RequestType.SERVICE_OF_DOCUMENTS, summary_of_facts="")
    checklist = check_request(request, SPAIN)
    assert checklist.complete
    assert status(checklist, "46(15)(c)") is ItemStatus.NOT_APPLICABLE
    no_addressee = changed(RequestType.SERVICE_OF_DOCUMENTS, persons=[{"role": "witness", "name": "W"}])
    checklist = check_request(no_addressee, SPAIN)
    assert blocking_ids(checklist) == ["46(15)(e)"]
    assert "addressee" in checklist.item("46(15)(e)").what_to_add
    wrong_assistance = changed(RequestType.SERVICE_OF_DOCUMENTS, assistance_sought=["taking-evidence"])
    assert "46(3)(b)" in check_request(wrong_assistance).item("46(15)(d)").what_to_add


def test_offences_the_convention_does_not_make_mandatory_warn_of_dual_criminality() -> None:
    offences = [Offence(article=OffenceArticle.A18, national_description="Trafic d'influence, art. 433-2").model_dump()]
    checklist = check_request(changed(RequestType.MLA_CRIMINAL, offences=offences), SPAIN)
    assert checklist.complete
    item = checklist.item("46(9)")
    assert item.status is ItemStatus.WARNING
    assert "art. 18 (trading in influence)" in item.what_to_add
    assert "46(9)(b)" in item.what_to_add
    assert "43(2)" in item.what_to_add
    extradition = check_request(changed(RequestType.EXTRADITION, offences=offences), SPAIN)
    assert "44(1)" in extradition.item("44(1)-dual-criminality").what_to_add
    assert status(check_request(example_request(RequestType.MLA_CRIMINAL)), "46(9)") is ItemStatus.PRESENT


def test_extradition_needs_the_person_sought_and_a_legal_basis() -> None:
    nobody = changed(RequestType.EXTRADITION, persons=[{"role": "witness", "name": "W", "location": "X"}])
    checklist = check_request(nobody, SPAIN)
    assert blocking_ids(checklist) == ["44(1)"]
    assert "role 'person-sought'" in checklist.item("44(1)").what_to_add
    assert status(checklist, "46(15)(e)") is ItemStatus.NOT_APPLICABLE
    assert status(checklist, "46(15)(d)") is ItemStatus.NOT_APPLICABLE
    unidentified = changed(
        RequestType.EXTRADITION, persons=[{"role": "person-sought", "name": "J", "location": "Madrid"}]
    )
    assert "date of birth or identity document" in check_request(unidentified).item("44(1)").what_to_add
    assert status(check_request(unidentified), "44(11)") is ItemStatus.WARNING  # nationality missing
    assert blocking_ids(check_request(changed(RequestType.EXTRADITION, legal_basis=None), SPAIN)) == ["legal-basis"]
    # for assistance the basis only warns: 46(7) applies the Convention's rules when no treaty binds both states
    mla = check_request(changed(RequestType.MLA_CRIMINAL, legal_basis=None), SPAIN)
    assert mla.complete
    assert status(mla, "legal-basis") is ItemStatus.WARNING


def test_extradition_warns_of_missing_penalties_and_mismatched_uncac_article() -> None:
    request = changed(
        RequestType.EXTRADITION,
        offences=[{"article": "15", "national_description": "Cohecho, art. 256"}],
        legal_basis=UncacBasis(article=46).model_dump(),
    )
    checklist = check_request(request, SPAIN)
    assert checklist.complete
    assert "offence 1 (art. 15): the maximum penalty" in checklist.item("44(8)").what_to_add
    assert "cite article 44" in checklist.item("legal-basis").what_to_add


def test_provisional_arrest_needs_urgency_with_reasons() -> None:
    checklist = check_request(changed(RequestType.PROVISIONAL_ARREST, urgency_reasons=""), SPAIN)
    assert blocking_ids(checklist) == ["44(10)"]
    assert blocking_ids(check_request(changed(RequestType.PROVISIONAL_ARREST, urgent=False), SPAIN)) == ["44(10)"]


def test_confiscation_follows_article_55_3() -> None:
    def assets(**fields: Any) -> dict[str, Any]:
        return {**example_request(RequestType.CONFISCATION).to_json()["assets"], **fields}

    no_route = check_request(changed(RequestType.CONFISCATION, assets=assets(confiscation_route=None)), SPAIN)
    assert blocking_ids(no_route) == ["55(1)"]
    not_final = check_request(changed(RequestType.CONFISCATION, assets=assets(order_final=False)), SPAIN)
    assert blocking_ids(not_final) == ["55(3)(b)"]
    assert "the order is final" in not_final.item("55(3)(b)").what_to_add
    no_copy = check_request(
        changed(RequestType.CONFISCATION, assets=assets(order_attachment="", third_party_measures=""))
    )
    assert "legally admissible copy" in no_copy.item("55(3)(b)").what_to_add
    assert "bona fide third parties" in no_copy.item("55(3)(b)").what_to_add
    domestic = assets(confiscation_route="domestic-order", properties=[{"description": "Flat"}])
    checklist = check_request(changed(RequestType.CONFISCATION, assets=domestic), SPAIN)
    assert checklist.complete  # location "to the extent possible", value "where relevant": warnings
    assert status(checklist, "55(3)(a)") is ItemStatus.WARNING
    assert "property 1: location (to the extent possible)" in checklist.item("55(3)(a)").what_to_add


def test_freezing_needs_the_property_and_warns_without_the_order() -> None:
    empty = check_request(changed(RequestType.FREEZING, assets=AssetDetails().model_dump()), SPAIN)
    assert blocking_ids(empty) == ["55(3)(c)"]
    no_order = changed(
        RequestType.FREEZING, assets=AssetDetails(properties=[Property(description="Account 1")]).model_dump()
    )
    checklist = check_request(no_order, SPAIN)
    assert checklist.complete
    assert "legally admissible copy" in checklist.item("55(3)(c)").what_to_add
    no_assets = changed(RequestType.FREEZING, assets=None)
    assert blocking_ids(check_request(no_assets, SPAIN)) == ["55(3)(c)"]


def test_return_of_assets_follows_article_57_3() -> None:
    request = changed(RequestType.RETURN_OF_ASSETS, assets=AssetDetails(return_ground="57(3)(b)").model_dump())
    checklist = check_request(request, SPAIN)
    assert blocking_ids(checklist) == ["57(3)"]
    assert "prior ownership" in checklist.item("57(3)").what_to_add
    assert "the confiscation in the requested state" in checklist.item("57(3)").what_to_add
    bribery = changed(
        RequestType.RETURN_OF_ASSETS,
        offences=[{"article": "15", "national_description": "Cohecho"}],
    )
    assert "art. 17" in check_request(bribery, SPAIN).item("57(3)").what_to_add


def test_deadline_and_urgency_need_reasons() -> None:
    request = changed(RequestType.MLA_CRIMINAL, deadline=Deadline(date="2027-01-15").model_dump(), urgent=True)
    item = check_request(request, SPAIN).item("46(24)")
    assert item.status is ItemStatus.WARNING
    assert "reasons for urgency" in item.what_to_add
    assert "reasons for the suggested deadline" in item.what_to_add
    assert check_request(changed(RequestType.MLA_CRIMINAL, deadline=None)).items  # no 46(24) item at all
    with pytest.raises(KeyError):
        check_request(changed(RequestType.MLA_CRIMINAL, deadline=None)).item("46(24)")


def test_confidentiality_is_suggested_for_measures_that_could_alert_the_person() -> None:
    freezing = check_request(changed(RequestType.FREEZING, confidentiality_requested=False), SPAIN)
    assert freezing.item("46(20)").status is ItemStatus.WARNING
    evidence = changed(RequestType.MLA_CRIMINAL, confidentiality_requested=False, assistance_sought=["taking-evidence"])
    with pytest.raises(KeyError):
        check_request(evidence).item("46(20)")


def test_de_minimis_flag_warns() -> None:
    item = check_request(changed(RequestType.MLA_CRIMINAL, de_minimis=True), SPAIN).item("46(9)(b)")
    assert (item.status, item.blocking) == (ItemStatus.WARNING, False)


def test_recipient_languages_notes_and_roles_apply() -> None:
    french = RecipientRequirements(languages=("fr",), notes="Requests for bank records:  cite the account number.")
    checklist = check_request(example_request(RequestType.MLA_CRIMINAL), french)
    assert blocking_ids(checklist) == ["46(14)"]
    assert "one of fr" in checklist.item("46(14)").what_to_add
    notes = checklist.item("recipient-notes")
    assert notes.status is ItemStatus.WARNING
    assert "cite the account number" in notes.what_to_add
    translated = changed(RequestType.MLA_CRIMINAL, translations=["en", "fr"])
    assert check_request(translated, french).complete
    extradition = check_request(example_request(RequestType.EXTRADITION), SPAIN)
    assert extradition.item("46(13)").status is ItemStatus.WARNING
    assert "extradition-central-authority" in extradition.item("46(13)").what_to_add
    assert check_request(example_request(RequestType.MLA_CRIMINAL), SPAIN).item("46(13)").status is ItemStatus.PRESENT


def test_language_matching_is_rfc_4647_basic_filtering() -> None:
    assert language_accepted("pt-BR", ["pt"])
    assert language_accepted("PT-br", ["pt-BR"])
    assert not language_accepted("pt", ["pt-BR"])
    assert not language_accepted("ptx", ["pt"])
    assert not language_accepted("", ["pt", ""])


def test_without_the_recipient_the_language_is_a_warning() -> None:
    item = check_request(example_request(RequestType.MLA_CRIMINAL)).item("46(14)")
    assert (item.status, item.blocking) == (ItemStatus.WARNING, False)
    assert "recipient's directory entry" in item.what_to_add


def test_checklist_is_deterministic_and_never_quotes_content() -> None:
    secret = "Zanzibar-7731"
    request = changed(
        RequestType.MLA_CRIMINAL,
        summary_of_facts=f"facts {secret}",
        purpose="",
        persons=[PersonConcerned(role=PersonRole.SUSPECT, name=secret).model_dump()],
        offences=[{"article": "20", "national_description": secret}],
    )
    first, second = check_request(request, SPAIN), check_request(request, SPAIN)
    assert first == second
    assert first.to_json() == second.to_json()
    assert secret not in first.render()
    assert secret not in str(first.to_json())
    with pytest.raises(IncompleteRequest) as caught:
        require_complete(first)
    assert secret not in caught.value.message


def test_incomplete_request_is_a_typed_protocol_error_carrying_the_checklist() -> None:
    checklist = check_request(blank_request(RequestType.EXTRADITION))
    with pytest.raises(IncompleteRequest) as caught:
        require_complete(checklist)
    error = caught.value
    assert isinstance(error, ProtocolError)
    assert error.code == "incomplete-request"
    assert error.checklist is checklist
    assert "supervisor override" in error.message
    require_complete(check_request(example_request(RequestType.EXTRADITION), SPAIN))  # returns quietly


def test_render_lists_missing_elements_with_what_to_add() -> None:
    text = check_request(blank_request(RequestType.MLA_CRIMINAL)).render()
    assert (
        text.splitlines()[0]
        == "Checklist for a request of type mla-criminal (mutual legal assistance in criminal matters)"
    )
    assert "MISSING" in text
    assert "-> the name of the requesting authority" in text
    assert text.splitlines()[-1].startswith("Incomplete: 6 blocking element(s) missing: 46(15)(a), 46(15)(b), offences")


def test_spontaneous_information_asks_for_nothing_and_only_warns_about_the_proceeding() -> None:
    request = changed(RequestType.SPONTANEOUS_INFORMATION, proceeding=Proceeding().model_dump(), purpose="")
    checklist = check_request(request, SPAIN)
    assert checklist.complete
    assert status(checklist, "46(15)(d)") is ItemStatus.NOT_APPLICABLE
    assert status(checklist, "46(15)(b)") is ItemStatus.WARNING
    assert "46(4)" in checklist.item("46(15)(f)").what_to_add
    assert blocking_ids(check_request(changed(RequestType.SPONTANEOUS_INFORMATION, summary_of_facts=""))) == [
        "46(15)(c)"
    ]


def test_the_caveats_a_request_asks_for_block_once_the_marking_is_known_and_warn_before() -> None:
    """Decision 85: confidentiality (art. 46(20)) needs ``uncac-46-20`` and a use limitation (46(19)) ``uncac-46-19``
    on the marking. Checked alone, the request says what its marking will need; given the marking's caveat names,
    a missing one blocks."""
    both = changed(RequestType.MLA_CRIMINAL, confidentiality_requested=True, use_limitation="Only for FPO3-2026-0042")
    alone = check_request(both, SPAIN)
    assert alone.complete and status(alone, "marking") is ItemStatus.WARNING
    assert alone.item("marking").what_to_add == (
        "mark it with the caveat uncac-46-19: the request states a use limitation (UNCAC art. 46(19)); "
        "mark it with the caveat uncac-46-20: the request asks for confidentiality (UNCAC art. 46(20))"
    )
    half = check_request(both, SPAIN, caveats=["uncac-46-20"])
    assert blocking_ids(half) == ["marking"] and "uncac-46-19" in half.item("marking").what_to_add
    assert "uncac-46-20" not in half.item("marking").what_to_add
    whole = check_request(both, SPAIN, caveats=["uncac-46-19", "uncac-46-20"])
    assert whole.complete and status(whole, "marking") is ItemStatus.PRESENT
    neither = changed(RequestType.MLA_CRIMINAL, confidentiality_requested=False, use_limitation="")
    assert "marking" not in [item.element for item in check_request(neither, SPAIN, caveats=[]).items]


def test_the_facts_are_waived_for_what_serves_documents_only_whatever_the_type() -> None:
    """Art. 46(15)(c) waives the summary of facts for requests to serve judicial documents: a service request that
    also asks for a search and for evidence needs its facts; a criminal request asking only for service does not."""
    from protocol.checklist import check_request
    from protocol.requests import Request

    service = example_request(RequestType.SERVICE_OF_DOCUMENTS).to_json()
    service |= {"assistance_sought": ["service-of-documents", "search-seizure-freezing"], "summary_of_facts": ""}
    checklist = check_request(Request.parse(service))
    assert not checklist.complete and "46(15)(c)" in [item.element for item in checklist.blocking]
    mla = example_request(RequestType.MLA_CRIMINAL).to_json() | {
        "assistance_sought": ["service-of-documents"],
        "summary_of_facts": "",
    }
    checklist = check_request(Request.parse(mla))
    assert checklist.item("46(15)(c)").status.value == "not-applicable", checklist
    plain = example_request(RequestType.SERVICE_OF_DOCUMENTS).to_json() | {"summary_of_facts": ""}
    assert check_request(Request.parse(plain)).item("46(15)(c)").status.value == "not-applicable"
    for kind in (RequestType.EXTRADITION, RequestType.PROVISIONAL_ARREST):  # the type says what is sought
        extradition = example_request(kind).to_json()
        extradition |= {"assistance_sought": ["service-of-documents"], "summary_of_facts": ""}
        assert "46(15)(c)" in [item.element for item in check_request(Request.parse(extradition)).blocking], kind


def test_spontaneous_information_needs_its_facts_whatever_it_lists_as_sought() -> None:
    """Spontaneous information (art. 46(4)) asks for nothing: its assistance_sought is not checked (46(15)(d) does
    not apply), so it must waive nothing either. Listing service-of-documents there waived the summary of facts,
    and a transmission with no information in it passed as complete."""
    bare = changed(RequestType.SPONTANEOUS_INFORMATION, summary_of_facts="")
    assert status(check_request(bare, SPAIN), "46(15)(c)") is ItemStatus.MISSING
    listed = changed(
        RequestType.SPONTANEOUS_INFORMATION, summary_of_facts="", assistance_sought=["service-of-documents"]
    )
    checklist = check_request(listed, SPAIN)
    assert status(checklist, "46(15)(c)") is ItemStatus.MISSING and not checklist.complete, checklist.render()


def test_serving_documents_needs_the_addressee_whatever_the_type_and_only_where_possible_details_warn() -> None:
    """46(15)(e) asks for persons' details "where possible"; serving documents is impossible without the addressee's
    name and where to serve them. What decides is what the request asks for (as for the facts, decision 144): a
    criminal request asking only for service passed with nobody to serve; and a service request was blocked by an
    addressee's unknown nationality."""
    only_service = changed(
        RequestType.MLA_CRIMINAL, assistance_sought=["service-of-documents"], summary_of_facts="", persons=[]
    )
    checklist = check_request(only_service, SPAIN)
    assert blocking_ids(checklist) == ["46(15)(e)"] and "addressee" in checklist.item("46(15)(e)").what_to_add
    addressee = example_request(RequestType.SERVICE_OF_DOCUMENTS).persons[0].model_dump(mode="json")
    assert addressee["role"] == "addressee"
    stateless = changed(RequestType.SERVICE_OF_DOCUMENTS, persons=[{**addressee, "nationality": ""}])
    checklist = check_request(stateless, SPAIN)
    assert checklist.complete and status(checklist, "46(15)(e)") is ItemStatus.WARNING, checklist.render()
    for missing in ("name", "location"):
        nowhere = changed(RequestType.SERVICE_OF_DOCUMENTS, persons=[{**addressee, missing: ""}])
        assert blocking_ids(check_request(nowhere, SPAIN)) == ["46(15)(e)"], missing
