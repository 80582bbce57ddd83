"""``comity request``: a template to fill in, and the completeness checklist of a filled-in request.

``comity request template TYPE > request.json`` prints an empty request of TYPE (``--example`` prints a filled-in,
fictitious one); ``comity request check request.json [--recipient-entry entry.json] [--caveat CAVEAT ...]`` prints
the checklist and exits with status 1 when a blocking element is missing (docs/requests.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from config.directory import AuthorityEntry, load_authority_entry
from gateway.cli.common import CommandError, reports_errors
from protocol.checklist import RecipientRequirements, check_request
from protocol.markings import caveat_name
from protocol.messages import parse_strict_json
from protocol.requests import (
    AssetDetails,
    AssistanceSought,
    Deadline,
    Offence,
    OffenceArticle,
    PersonConcerned,
    PersonRole,
    Proceeding,
    ProceedingNature,
    Property,
    Request,
    RequestingAuthority,
    RequestType,
    TreatyBasis,
    UncacBasis,
    blank_request,
)

__all__ = ["example_request", "recipient_requirements", "request"]

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_TYPES = click.Choice([t.value for t in RequestType])


def recipient_requirements(entry: AuthorityEntry) -> RecipientRequirements:
    """What the checker needs from a directory entry, as plain values (protocol/ does not import config/)."""
    return entry.request_requirements()


# --- a fictitious, complete request per type (documentation and tests) ---------------------------------------------

_ASSISTANCE = {
    RequestType.MLA_CRIMINAL: [AssistanceSought.DOCUMENTS_RECORDS, AssistanceSought.TAKING_EVIDENCE],
    RequestType.MLA_CIVIL_ADMINISTRATIVE: [AssistanceSought.DOCUMENTS_RECORDS],
    RequestType.FREEZING: [AssistanceSought.CHAPTER_V_IDENTIFY_FREEZE_TRACE],
    RequestType.CONFISCATION: [AssistanceSought.CHAPTER_V_RECOVERY],
    RequestType.RETURN_OF_ASSETS: [AssistanceSought.CHAPTER_V_RECOVERY],
    RequestType.SERVICE_OF_DOCUMENTS: [AssistanceSought.SERVICE_OF_DOCUMENTS],
}
_BASIS = {
    RequestType.MLA_CRIMINAL: 46,
    RequestType.MLA_CIVIL_ADMINISTRATIVE: 43,
    RequestType.EXTRADITION: 44,
    RequestType.PROVISIONAL_ARREST: 44,
    RequestType.FREEZING: 55,
    RequestType.CONFISCATION: 55,
    RequestType.RETURN_OF_ASSETS: 57,
    RequestType.SERVICE_OF_DOCUMENTS: 46,
    RequestType.SPONTANEOUS_INFORMATION: 46,
}


def example_request(request_type: RequestType) -> Request:
    """A filled-in request of ``request_type`` about a fictitious case; it passes the checker."""
    extradition = request_type in (RequestType.EXTRADITION, RequestType.PROVISIONAL_ARREST)
    civil = request_type is RequestType.MLA_CIVIL_ADMINISTRATIVE
    role = PersonRole.PERSON_SOUGHT if extradition else PersonRole.SUSPECT
    if request_type is RequestType.SERVICE_OF_DOCUMENTS:
        role = PersonRole.ADDRESSEE
    assets = None
    if request_type is RequestType.FREEZING:
        assets = AssetDetails(
            properties=[
                Property(description="Account 0001-2345 held by Example Trading SA", location="Bank X, Madrid")
            ],
            order="Order of the Federal Court No. 4, 2026-03-02, case 123/2026",
            order_attachment="freezing-order.pdf",
        )
    elif request_type is RequestType.CONFISCATION:
        assets = AssetDetails(
            properties=[
                Property(description="Flat, Calle Mayor 1, Madrid", location="Madrid", estimated_value="EUR 450000")
            ],
            confiscation_route="foreign-order",
            order="Judgment of the Oral Court No. 2, 2026-05-10, case 77/2025",
            order_attachment="confiscation-order.pdf",
            extent_of_execution="The whole property.",
            third_party_measures="Notice published and served on the registered co-owner; hearing held on 2026-04-02.",
            order_final=True,
        )
    elif request_type is RequestType.RETURN_OF_ASSETS:
        assets = AssetDetails(
            return_ground="57(3)(a)",
            confiscation_reference="Confiscation order of the requested state, case 88/2027",
            order_final=True,
        )
    offences = [
        Offence(
            article=OffenceArticle.A17,
            national_description="Peculado, art. 261 of the Criminal Code",
            maximum_penalty="10 years' imprisonment",
        )
    ]
    return Request(
        type=request_type,
        requesting_authority=RequestingAuthority(
            name="Ministry of Justice, Directorate of International Cooperation",
            authority_id="ar.mj",
            contact="A. Officer, +54 11 0000 0000",
        ),
        legal_basis=(
            TreatyBasis(name="Treaty on Mutual Legal Assistance in Criminal Matters (example)")
            if request_type is RequestType.MLA_CRIMINAL
            else UncacBasis(article=_BASIS[request_type], paragraph="")
        ),
        proceeding=Proceeding(
            nature=ProceedingNature.CIVIL_PROCEEDING if civil else ProceedingNature.PROSECUTION,
            subject_matter="Diversion of public funds from a road-building contract",
            conducting_authority="Federal Prosecutor's Office No. 3",
            conducting_authority_functions="Directs the criminal investigation and prosecutes before federal courts",
            reference="FPO3-2026-0042",
        ),
        offences=offences,
        assistance_sought=_ASSISTANCE.get(request_type, []),
        persons=[
            PersonConcerned(
                role=role,
                name="J. Example",
                date_of_birth="1970-01-31",
                nationality="AR",
                location="Calle Mayor 1, Madrid",
            )
        ],
        summary_of_facts="From 2021 to 2023 the accused, a public official, diverted road funds to accounts abroad.",
        purpose="To obtain evidence for the prosecution before the Federal Court No. 4.",
        urgent=request_type is RequestType.PROVISIONAL_ARREST,
        urgency_reasons="The person sought has booked a flight out of the requested state."
        if request_type is RequestType.PROVISIONAL_ARREST
        else "",
        deadline=Deadline(date="2027-01-15", reasons="The trial opens on 2027-02-01."),
        confidentiality_requested=True,
        language="es",
        translations=["en"],
        assets=assets,
    )


# --- commands -----------------------------------------------------------------------------------------------------


@click.group()
def request() -> None:
    """Prepare a request that is complete the first time (UNCAC art. 46(15), 44, 55, 57)."""


@request.command()
@click.argument("request_type", metavar="TYPE", type=_TYPES)
@click.option("--example", is_flag=True, help="Print a filled-in example (a fictitious case) instead of a blank.")
def template(request_type: str, example: bool) -> None:
    """Print a request of TYPE to fill in, as JSON.

    TYPE is one of: mla-criminal, mla-civil-administrative, extradition, provisional-arrest, freezing,
    confiscation, return-of-assets, service-of-documents, spontaneous-information.
    """
    kind = RequestType(request_type)
    model = example_request(kind) if example else blank_request(kind)
    click.echo(json.dumps(model.to_json(), indent=2, ensure_ascii=False))


@request.command()
@click.argument("file", type=_existing_file)
@click.option(
    "--recipient-entry",
    type=_existing_file,
    help="The recipient's directory entry (entry.json): checks its accepted languages, designation and notes.",
)
@click.option(
    "--caveat",
    "caveats",
    multiple=True,
    metavar="CAVEAT",
    help="A caveat of the marking it will be sent under (repeat for each): checks the caveats the request needs. "
    "Without it, those are only a warning.",
)
@reports_errors
def check(file: Path, recipient_entry: Path | None, caveats: tuple[str, ...]) -> None:
    """Print the checklist of FILE (a request as JSON); exit status 1 if a blocking element is missing."""
    loaded = Request.parse(parse_strict_json(file.read_bytes()))
    recipient = None
    if recipient_entry is not None:
        recipient = recipient_requirements(load_authority_entry(recipient_entry.read_bytes()))
    checklist = check_request(loaded, recipient, [caveat_name(caveat) for caveat in caveats] if caveats else None)
    click.echo(checklist.render())
    if checklist.blocking:
        ids = ", ".join(item.element for item in checklist.blocking)
        raise CommandError(f"{file.name} is incomplete: missing {ids}")
