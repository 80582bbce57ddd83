"""C2SP tlog-checkpoint note bodies: origin, tree size, root hash, optional extension lines.

    example.com/behind-the-sofa
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

This module only formats and parses the note *text*; signing and opening the note is ``crypto.note``. Parsing is
strict so that one checkpoint has exactly one text: what we sign, cosign and compare is byte-for-byte canonical.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.merkle import HASH_SIZE

__all__ = [
    "MAX_TREE_SIZE",
    "SERVED_COSIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "check_ledger_checkpoint",
    "ledger_origin",
]

# tlog-checkpoint "Note text" item 2: decimal, no leading zeroes unless the tree is empty. Sizes are uint64 in every
# implementation we interoperate with.
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
MAX_TREE_SIZE = 2**64 - 1
# cosignature lines appended to a checkpoint a gateway serves or an auditor reads: the first witnesses to cosign it;
# C2SP signed-note verifiers need accept only 16 signatures, the log's and 15 more (decision 124)
SERVED_COSIGNATURES = 15


class CheckpointError(ProtocolError):
    """A checkpoint body is malformed; the note it came from must be rejected."""

    code = "checkpoint-invalid"


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"checkpoint {what} is empty")
    # The body is the text of a signed note, which allows no control characters but newline (C2SP signed-note).
    if any(ch < " " for ch in line):
        raise CheckpointError(f"checkpoint {what} contains a control character or newline")


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed statement of its tree head. Construction validates every field."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # tlog-checkpoint item 1: the origin is non-empty. We also refuse spaces and '+': the log signs with a key
        # named after its origin, and signed-note key names MUST NOT contain Unicode spaces or '+'.
        _check_line(self.origin, "origin")
        if any(ch.isspace() or ch == "+" for ch in self.origin):
            raise CheckpointError("checkpoint origin contains a space or '+'; use a schema-less URL (example.com/log)")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint tree size must be an integer in [0, 2**64 - 1], got {self.size!r}")
        # Item 3: the RFC 6962 / RFC 9162 root hash, SHA-256.
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        # Item 4: extension lines, if any, MUST be non-empty.
        for extension in self.extensions:
            _check_line(extension, "extension line")

    def to_text(self) -> str:
        """The note text: each line ends in a newline, the last one included."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a note text (no signature lines). Raises :class:`CheckpointError` unless it is canonical."""
        if not isinstance(text, str):
            raise CheckpointError("checkpoint text must be a str")
        # The text is a sequence of at least three non-empty lines, each ending in a newline.
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint text has {len(lines)} lines, needs origin, tree size and root hash")
        origin, size_line, hash_line, *extensions = lines
        _check_line(origin, "origin")
        if not _SIZE.fullmatch(size_line):
            raise CheckpointError("checkpoint tree size must be ASCII decimal digits without leading zeroes")
        return cls(origin, int(size_line), _decode_root(hash_line), tuple(extensions))


def _decode_root(line: str) -> bytes:
    # Standard base64 (RFC 4648 section 4), canonical: re-encoding must give back the same line, so no whitespace,
    # no missing padding and no stray bits.
    try:
        root = base64.b64decode(line.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise CheckpointError("checkpoint root hash is not standard base64") from None
    if base64.b64encode(root).decode("ascii") != line:
        raise CheckpointError("checkpoint root hash is not canonical standard base64")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes, got {len(root)}")
    return root


def ledger_origin(authority_id: str) -> str:
    """The origin of ``authority_id``'s ledger, which is also the key name its checkpoints are signed under
    (decision 14)."""
    return f"comity-ledger/{authority_id}"


def check_ledger_checkpoint(checkpoint: Checkpoint, origin: str) -> None:
    """What a Comity ledger's checkpoint is beyond the C2SP format (docs/protocol.md 10.2), for anyone who takes
    one signed under ``origin`` (the witness, the auditor). A note's key name says who signed it, not which log the
    body is about: signed under ``origin``, a body may still name another origin, and a witness cosigns the body. The
    format has no extension lines: what they would claim, no one checks. Raises :class:`CheckpointError`."""
    if checkpoint.origin != origin:
        raise CheckpointError(f"origin {checkpoint.origin!r}, expected {origin!r}")
    if checkpoint.extensions:
        raise CheckpointError("the signed note has extension lines, which this ledger's format has not")
