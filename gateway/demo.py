"""The ``make demo`` scenario: two central authorities exchange a request and its response, end to end.

Argentina's central authority (ar.mj) and Australia's (au.ag) are created with the real commands, listed in a
signed directory, and started on 127.0.0.1 talking mutual TLS with the pinned certificates. An officer at ar.mj
sends a mutual legal assistance request with a 5 MB attachment; au.ag verifies it and returns a signed receipt; an
officer there opens it, acknowledges it and answers with an attachment; ar.mj opens the answer. The demo prints each
step and, at the end, the acknowledgement timeline of the request as each side recorded it in its ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from config.settings import load_settings
from crypto.receipts import verify_receipt
from gateway.app import RunningGateway, start_gateway
from gateway.cli.common import CommandError
from gateway.context import Gateway
from gateway.logs import configure_logging
from gateway.provision import AuthoritySpec, Provisioned, comity, provision
from protocol.checkpoint import Checkpoint
from store.messages import Messages

__all__ = ["run_demo"]

PASSPHRASE = "demo passphrase: never use for real keys"  # noqa: S105 - the demo's throwaway keys
AUTHORITIES = [
    AuthoritySpec("ar.mj", "Ministerio de Justicia y Derechos Humanos (Argentina)", "AR", ("es", "en")),
    AuthoritySpec("au.ag", "Attorney-General's Department (Australia)", "AU", ("en",)),
]
REQUEST = {
    "to": "au.ag",
    "kind": "request",
    "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19", "uncac-46-20"]},
    "content": {
        "subject": "Mutual legal assistance: bank records (UNCAC art. 46(3)(f))",
        "legal_basis": "UNCAC art. 46",
        "offences": ["UNCAC art. 15 (bribery of national public officials)", "UNCAC art. 23 (laundering)"],
        "summary_of_facts": "Payments to a procurement official routed through an account held in Australia.",
        "assistance_sought": ["bank records of the account and its beneficial owner, 2019-2024"],
    },
}


class Officer:
    """An officer at one gateway, using its local API with a bearer token."""

    def __init__(self, name: str, side: Provisioned, token: str, session: aiohttp.ClientSession) -> None:
        self.name, self.side, self.token, self.session = name, side, token, session
        self.base = f"http://127.0.0.1:{side.api_port}"

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            body = await response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status} {body[:300]!r}")
            return json.loads(body) if response.content_type.endswith("json") else body

    async def submit(self, path: str, draft: dict[str, Any], name: str, data: bytes, media_type: str) -> str:
        form = aiohttp.FormData()
        form.add_field("message", json.dumps(draft), content_type="application/json")
        form.add_field("attachment", io.BytesIO(data), filename=name, content_type=media_type)
        return str((await self.call("POST", path, data=form))["id"])

    async def wait_state(self, message_id: str, wanted: str, within: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            summary: dict[str, Any] = await self.call("GET", f"/v1/messages/{message_id}")
            if summary["state"] == wanted:
                return summary
            if time.monotonic() > deadline:
                raise RuntimeError(f"message {message_id} stayed {summary['state']!r}; expected {wanted!r}")
            await asyncio.sleep(0.02)


def _token(config: Path, username: str, role: str = "officer") -> str:
    """A user cleared for the demo's markings, in the MLA unit, with a one-day token."""
    args = ["user", "create", username, "--role", role, "--unit", "mla", "--token-days", "1", "--config", str(config)]
    if role in ("officer", "supervisor"):
        args += ["--clearance", "STRICTLY CONFIDENTIAL", "--caveat", "uncac-46-19", "--caveat", "uncac-46-20"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        comity(*args)
    return out.getvalue().strip().splitlines()[-1]


def _comity_out(say: Callable[[str], None], *args: str) -> None:
    """Run a comity command and show what it prints, indented."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        comity(*args)
    for line in out.getvalue().rstrip().splitlines():
        say("   " + line)


def _audit(workdir: Path, side: Provisioned, token: str, say: Callable[[str], None]) -> None:
    say(f"   $ comity audit verify --url http://127.0.0.1:{side.api_port} --authority {side.spec.id} ...")
    _comity_out(
        say,
        "audit",
        "verify",
        "--url",
        f"http://127.0.0.1:{side.api_port}",
        "--token",
        token,
        "--directory",
        str(side.data_dir / "directory.jws"),
        "--directory-key",
        str(side.data_dir / "directory-key.jwk"),
        "--authority",
        side.spec.id,
        "--state",
        str(workdir / "auditor-state.json"),
        "--no-progress",
    )


async def _run(workdir: Path, say: Callable[[str], None]) -> None:
    say("1. Creating two central authorities, their keys and a signed directory")
    ar, au = await asyncio.to_thread(
        provision, workdir, AUTHORITIES, passphrase=PASSPHRASE, fast_kdf=False, say=lambda s: say("   " + s)
    )
    tokens = [await asyncio.to_thread(_token, p.config, name) for p, name in ((ar, "alice"), (au, "bruce"))]
    supervisor = await asyncio.to_thread(_token, au.config, "sam", "supervisor")
    say("   officers alice (ar.mj) and bruce (au.ag), supervisor sam (au.ag): cleared, tokens stored hashed")

    say("2. Starting both gateways on 127.0.0.1 (federation over mutual TLS, pinned certificates)")
    running: list[RunningGateway] = []
    try:
        for side in (ar, au):
            gw = await Gateway.load(load_settings(side.config), PASSPHRASE.encode())
            running.append(await start_gateway(gw))
            say(f"   {side.spec.id}: federation https://127.0.0.1:{side.federation_port}, API :{side.api_port}")
        async with aiohttp.ClientSession() as session:
            alice = Officer("alice", ar, tokens[0], session)
            bruce = Officer("bruce", au, tokens[1], session)
            sam = Officer("sam", au, supervisor, session)
            request_id = await _exchange(alice, bruce, sam, running[0].gw, running[1].gw, say)
            await asyncio.sleep(1.2)  # let each gateway sign a checkpoint covering its last events
            say("7. An auditor verifies both ledgers through the auditor API (trusting only the signed directory)")
            for side in (ar, au):
                auditor = await asyncio.to_thread(_token, side.config, "audrey", "auditor")
                await asyncio.to_thread(_audit, workdir, side, auditor, say)
    finally:
        say("8. Stopping both gateways")
        for item in running:
            await item.stop()
    say("   stopped cleanly")
    say(f"9. The acknowledgement timeline of request {request_id}, as each side recorded it")
    urls = [f"sqlite+aiosqlite:///{side.data_dir / 'comity.db'}" for side in (ar, au)]
    await asyncio.to_thread(
        _comity_out, say, "audit", "timeline", request_id, "--database", urls[0], "--database", urls[1]
    )


async def _exchange(
    alice: Officer, bruce: Officer, sam: Officer, ar_gw: Gateway, au_gw: Gateway, say: Callable[[str], None]
) -> str:
    evidence = os.urandom(5 * 1024 * 1024)
    say("3. alice (ar.mj) drafts and sends an MLA request with a 5 MB attachment")
    request_id = await alice.submit(
        "/v1/messages", REQUEST, "account-opening-documents.pdf", evidence, "application/pdf"
    )
    say(f"   request {request_id} sealed (Ed25519 JWS inside ECDH-ES+A256KW/A256GCM JWE) and queued")
    delivered = await alice.wait_state(request_id, "delivered")
    async with ar_gw.reader.connect() as conn:
        row = await Messages.get(conn, request_id)
    assert row.receipt is not None
    receipt = verify_receipt(row.receipt, au_gw.directory.authority("au.ag").all_signing_keys())
    checkpoint = Checkpoint.from_text(receipt.checkpoint.split("\n\n")[0] + "\n")
    say(f"4. au.ag verified it and answered with a signed receipt: received at {delivered['received_at']},")
    say(f"   ledger index {receipt.ledger_index}, checkpoint of {checkpoint.size} entries, origin {checkpoint.origin}")

    case_id = (await sam.call("GET", f"/v1/messages/{request_id}"))["case_id"]
    await sam.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "bruce"})
    say("5. supervisor sam (au.ag) assigns the new case to bruce, who is cleared for CONFIDENTIAL and its caveats")
    opened = await bruce.call("POST", f"/v1/messages/{request_id}/open", json={"purpose": "review"})
    attachment = await bruce.call("GET", f"/v1/messages/{request_id}/attachments/0")
    same = hashlib.sha256(attachment).digest() == hashlib.sha256(evidence).digest()
    say(f"   bruce opens it (ledgered with his name and purpose): subject {opened['content']['subject']!r}")
    say(f"   attachment {opened['attachments'][0]['name']} ({len(attachment):,} bytes, SHA-256 matches: {same})")
    await bruce.call("POST", f"/v1/messages/{request_id}/acknowledge", json={"confidentiality": "can-comply"})
    await alice.wait_state(request_id, "acknowledged")
    say("   bruce acknowledges, answering that au.ag can keep the request confidential (UNCAC art. 46(20));")
    say("   ar.mj records the signed acknowledgement")
    answer = {
        "marking": REQUEST["marking"],
        "content": {"subject": "Execution of the request", "text": "The bank records are attached."},
    }
    statement = b"%PDF-1.7 bank statement (demo)\n" * 1000
    response_id = await bruce.submit(
        f"/v1/messages/{request_id}/respond", answer, "bank-statements.pdf", statement, "application/pdf"
    )
    await alice.wait_state(request_id, "answered")
    say(f"   bruce answers with response {response_id} and its attachment")

    reply = await alice.call("POST", f"/v1/messages/{response_id}/open", json={"purpose": "review"})
    data = await alice.call("GET", f"/v1/messages/{response_id}/attachments/0")
    say(f"6. alice (ar.mj) opens the response: {reply['content']['text']!r} + {len(data):,} bytes attached")

    return request_id


# Written into the demo's working directory: only a directory holding it is removed by the next run.
DEMO_MARKER = ".comity-demo"


def fresh_workdir(workdir: Path) -> None:
    """Make ``workdir`` empty and mark it as the demo's. A directory made by an earlier run (it holds
    :data:`DEMO_MARKER`) is removed first; an empty one is used as it is; anything else is refused, never removed."""
    if workdir.is_dir() and (workdir / DEMO_MARKER).is_file():
        shutil.rmtree(workdir)
    elif workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise CommandError(f"{workdir} exists and was not made by the demo; remove it or choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEMO_MARKER).write_text("made by 'comity demo': the next run removes this directory\n")


@contextlib.contextmanager
def _without_settings_from_the_environment() -> Iterator[None]:
    """The demo makes its own authorities, with their own files: none of the operator's ``COMITY_*`` variables (a
    database URL, a port, a passphrase file) may reach them, or the demo would write into what they name."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("COMITY_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        for name in [name for name in os.environ if name.startswith("COMITY_")]:
            del os.environ[name]
        os.environ.update(saved)


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> None:
    fresh_workdir(workdir)
    configure_logging("warning")
    started = time.monotonic()
    with _without_settings_from_the_environment():
        asyncio.run(_run(workdir.absolute(), say))
    say(f"Demo finished in {time.monotonic() - started:.1f} s; files are in {workdir}/")
