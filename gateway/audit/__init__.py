"""The auditor: verify a Comity ledger without trusting its operator (``comity audit``, ``docs/ledger.md``)."""

from gateway.audit.sources import DatabaseSource, HttpSource, SourceError, open_source
from gateway.audit.state import AuditState, StateError
from gateway.audit.trust import Trust, load_trust, trust_from_directory
from gateway.audit.verify import AuditFailure, Summary, verify_ledger

__all__ = [
    "AuditFailure",
    "AuditState",
    "DatabaseSource",
    "HttpSource",
    "SourceError",
    "StateError",
    "Summary",
    "Trust",
    "load_trust",
    "open_source",
    "trust_from_directory",
    "verify_ledger",
]
