"""SQLAlchemy Core tables: the schema of one gateway, and the metadata Alembic migrates.

Content never lies here in plaintext: envelopes are stored as they travel (JWE, encrypted to the recipient) or as
the sender's archive copy (JWE to its own archive key); attachment ciphertexts live in files named by digest.
The ledger tables hold canonical JSON entries with ids, kinds, parties, actors, times, digests and markings only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect

__all__ = [
    "attachments",
    "case_assignments",
    "case_dates",
    "case_flags",
    "case_work",
    "case_stats",
    "cases",
    "consultation_drafts",
    "consultations",
    "checkpoints",
    "consents",
    "cosignatures",
    "ledger_entries",
    "ledger_head",
    "ledger_nodes",
    "login_attempts",
    "messages",
    "metadata",
    "oral_requests",
    "outbox",
    "peer_alarms",
    "peer_checkpoints",
    "settings_state",
    "tokens",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both stores (SQLite would otherwise hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


TZ = UTCDateTime()

# one row per message this gateway sent or received
messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("direction", String(3), nullable=False),  # "out" | "in"
    Column("peer", String(40), nullable=False),  # the counterpart authority
    Column("kind", String(20), nullable=False),
    Column("in_reply_to", String(36), nullable=True),
    Column("marking_level", String(64), nullable=False),
    Column("marking_caveats", Text, nullable=False),  # canonical JSON list
    Column("state", String(20), nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # the envelope bytes exactly as they travel
    Column("archive", LargeBinary, nullable=True),  # out: the sender's copy sealed to its archive key
    Column("envelope_sha256", String(64), nullable=False),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("received_at", TZ, nullable=True),  # in: our receive time; out: the peer's signed receive time
    # in: the receipt we issued; out: the peer's signed answer we hold (its receipt, or its final refusal)
    Column("receipt", Text, nullable=True),
    Column("ledger_index", BigInteger, nullable=True),  # in: index of our "received" event
    Column("case_id", String(36), nullable=True),  # the request that opened the case (its own id for a request)
    Column("confidentiality_answer", String(16), nullable=True),  # art. 46(20): can-comply | cannot-comply
    Index("ix_messages_direction_created", "direction", "created_at"),
    Index("ix_messages_in_reply_to", "in_reply_to"),
    # the received status queries, for the scan that answers those left unanswered (gateway/requests.py)
    Index(
        "ix_messages_status_queries",
        "created_at",
        postgresql_where=text("kind = 'status_query' AND direction = 'in'"),
        sqlite_where=text("kind = 'status_query' AND direction = 'in'"),
    ),
)

# a case is the thread of messages opened by one request; it belongs to a unit and has assigned officers
cases = Table(
    "cases",
    metadata,
    Column("id", String(36), primary_key=True),
    # None only for an incoming case until a supervisor assigns it (triage); '' for the users without a unit
    Column("unit", String(64), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("state", String(40), nullable=True),  # our life-cycle state (protocol.lifecycle.State)
    Column("peer_state", String(40), nullable=True),  # the counterpart's state, as its last status report said
    # when the counterpart made the transition that report names (its signed "at"): an older report arriving later
    # (reports travel concurrently) does not move the case back
    Column("peer_state_at", TZ, nullable=True),
    Column("request_type", String(40), nullable=True),  # protocol.requests.RequestType, when the request carried one
    Column("last_action_at", TZ, nullable=True),  # the time of our last transition (art. 46(24) status)
)

case_assignments = Table(
    "case_assignments",
    metadata,
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("assigned_by", String(64), nullable=False),
    Column("assigned_at", TZ, nullable=False),
    PrimaryKeyConstraint("case_id", "user_id"),
)

# case work (store/casework.py): notes and next actions are free text that never reaches the ledger or the logs
case_work = Table(
    "case_work",
    metadata,
    Column("case_id", String(36), ForeignKey("cases.id"), primary_key=True),
    Column("next_action", Text, nullable=True),
    Column("updated_by", String(64), nullable=False),
    Column("updated_at", TZ, nullable=False),
)

case_flags = Table(
    "case_flags",
    metadata,
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False),
    Column("flag", String(40), nullable=False),  # protocol.casework.Flag
    Column("set_by", String(64), nullable=False),
    Column("set_at", TZ, nullable=False),
    PrimaryKeyConstraint("case_id", "flag"),
)

# critical dates and tasks; due is a date of the authority's calendar (the time_zone setting), the last day on time
case_dates = Table(
    "case_dates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", String(36), ForeignKey("cases.id"), nullable=False),
    Column("kind", String(40), nullable=False),  # protocol.casework.DateKind
    Column("due", Date, nullable=False),
    Column("note", Text, nullable=True),
    Column("created_by", String(64), nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("done_at", TZ, nullable=True),
    Column("done_by", String(64), nullable=True),
    Column("notified_soon_at", TZ, nullable=True),  # the due-soon notification went out
    Column("notified_overdue_at", TZ, nullable=True),  # the overdue notification went out
    Index("ix_case_dates_open_due", "done_at", "due"),
    Index("ix_case_dates_case_id", "case_id"),
)

# an urgent request made or received orally (art. 46(14)); the case it opened, until confirmed in writing
oral_requests = Table(
    "oral_requests",
    metadata,
    Column("case_id", String(36), ForeignKey("cases.id"), primary_key=True),
    Column("peer", String(40), nullable=False),
    Column("direction", String(3), nullable=False),  # "in": received from the peer | "out": made to it
    Column("oral_on", Date, nullable=False),
    Column("marking_level", String(64), nullable=False),
    Column("marking_caveats", Text, nullable=False),  # canonical JSON list
    Column("task_id", Integer, ForeignKey("case_dates.id"), nullable=False),  # the confirm-in-writing task
    Column("confirmed_by", String(36), nullable=True),  # the written request's message id, once linked
)

# statistics (store/stats.py): one row per case a request opened, with the request's coded facets only (no content,
# docs/requests.md "Statistics") and its milestone times, each equal to the time of the ledger entry that marks it
case_stats = Table(
    "case_stats",
    metadata,
    Column("case_id", String(36), primary_key=True),  # the request's message id
    Column("direction", String(3), nullable=False),  # "out": we asked; "in": we were asked
    Column("counterpart", String(40), nullable=False),  # the other authority's directory id
    Column("country", String(2), nullable=False),  # its ISO 3166-1 alpha-2 country, from the directory
    Column("opened_at", TZ, nullable=False),  # message.submitted (out) or message.received (in)
    Column("year", Integer, nullable=False),  # of opened_at, UTC
    Column("request_type", String(40), nullable=True),
    Column("legal_basis", String(12), nullable=True),  # uncac | treaty | reciprocity
    Column("uncac_article", Integer, nullable=True),
    Column("urgent", Boolean, nullable=False, default=False),
    # multi-valued facets as bit masks (protocol/stats.py OFFENCE_BITS, ASSISTANCE_BITS, REFUSAL_GROUND_BITS)
    Column("offences", Integer, nullable=False, default=0),
    Column("assistance", Integer, nullable=False, default=0),
    Column("refusal_grounds", Integer, nullable=False, default=0),
    Column("deadline", Date, nullable=True),  # the suggested deadline date (art. 46(24))
    Column("state", String(40), nullable=False),  # as cases.state
    Column("officer_id", Integer, nullable=True),  # the officer most recently assigned (users.id), for by-officer
    Column("outcome", String(20), nullable=True),  # executed | refused | withdrawn, once reached
    Column("start_at", TZ, nullable=True),  # in: received; out: message.sent (transmission began)
    Column("acknowledged_at", TZ, nullable=True),
    Column("first_answer_at", TZ, nullable=True),
    Column("executed_at", TZ, nullable=True),
    Column("outcome_at", TZ, nullable=True),
    Column("closed_at", TZ, nullable=True),
    # waits from start_at to each milestone in milliseconds, kept with the milestone (what the percentiles sort)
    Column("wait_acknowledge_ms", BigInteger, nullable=True),
    Column("wait_first_answer_ms", BigInteger, nullable=True),
    Column("wait_execution_ms", BigInteger, nullable=True),
    # a received request under an embargo: its date; every statistic leaves the case out until then (decision 162)
    Column("hidden_until", Date, nullable=True),
    Index("ix_case_stats_direction_year", "direction", "year"),
    Index("ix_case_stats_direction_opened", "direction", "opened_at"),
    Index("ix_case_stats_counterpart", "counterpart"),
    Index("ix_case_stats_country", "country"),
    Index("ix_case_stats_type", "request_type"),
    Index("ix_case_stats_state", "state"),
    Index("ix_case_stats_deadline", "deadline"),
)

# an originator's signed consent to pass a message's content on to a third authority (use limitation, no-onward)
consents = Table(
    "consents",
    metadata,
    Column("message_id", String(36), nullable=False),  # the message whose content may travel on
    Column("recipient", String(40), nullable=False),  # the third authority it may go to
    Column("granted_by", String(40), nullable=False),  # the originator who signed the consent
    Column("consent_message_id", String(36), nullable=False),
    Column("received_at", TZ, nullable=False),
    PrimaryKeyConstraint("message_id", "recipient"),
)

# an informal consultation thread (docs/requests.md, "Consultations"): its id is the id of its first message and of
# its case; only ids, parties, states and times here, never a subject or text (those travel encrypted)
consultations = Table(
    "consultations",
    metadata,
    Column("id", String(36), ForeignKey("cases.id"), primary_key=True),
    Column("peer", String(40), nullable=False),
    Column("direction", String(3), nullable=False),  # "out": we started it; "in": the peer did
    Column("about_case_id", String(36), nullable=True),  # the case (request id) it is about, if any
    Column("state", String(16), nullable=False),  # open | converted
    Column("converted_request_id", String(36), nullable=True),  # the formal request it became
    Column("created_at", TZ, nullable=False),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=True),  # None for a thread the peer started
    Column("last_message_at", TZ, nullable=False),
    Index("ix_consultations_about", "about_case_id"),
    Index("ix_consultations_converted", "converted_request_id"),
)

# the checklist of a draft request shared in a consultation: element ids only (protocol/consultations.py DraftCheck)
consultation_drafts = Table(
    "consultation_drafts",
    metadata,
    Column("message_id", String(36), primary_key=True),  # the message that shared the draft
    Column("thread_id", String(36), ForeignKey("consultations.id"), nullable=False),
    Column("request_type", String(40), nullable=False),
    Column("blocking", Text, nullable=False),  # canonical JSON list of checklist element ids
    Column("warnings", Text, nullable=False),  # canonical JSON list of checklist element ids
    Index("ix_consultation_drafts_thread", "thread_id"),
)

# attachment ciphertexts beside a message; name, size and key are only in the signed, encrypted manifest
attachments = Table(
    "attachments",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("ct_size", BigInteger, nullable=False),
    Column("ct_sha256", String(64), nullable=False),
    Column("path", String(255), nullable=False),  # relative to the attachments directory
    PrimaryKeyConstraint("message_id", "position"),
)

# messages waiting for a receipt; a row is deleted in the transaction that records the receipt
outbox = Table(
    "outbox",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.id"), primary_key=True),
    Column("peer", String(40), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TZ, nullable=False),
    Column("claimed_until", TZ, nullable=True),
    Column("last_error", String(200), nullable=True),
    # an earlier message of ours to the same peer that this one follows (its thread, the message it answers or
    # consents about): while that one waits for its receipt, this one is not sent (decision 112)
    Column("after_id", String(36), nullable=True),
    Index("ix_outbox_next_attempt", "next_attempt_at"),
)

# the tracking ledger (RFC 9162 leaves); index is the leaf index, entry the RFC 8785 canonical JSON
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", LargeBinary, nullable=False),
    Column("message_id", String(36), nullable=True),
    Column("type", String(40), nullable=False),
    Column("time", TZ, nullable=False),
    Index("ix_ledger_entries_message", "message_id"),
)

# hash of every perfect subtree (level, index) so that proofs read O(log n) rows and never rehash the log
ledger_nodes = Table(
    "ledger_nodes",
    metadata,
    Column("level", Integer, nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    PrimaryKeyConstraint("level", "idx"),
)

# a single row (id = 1): the tree size and its frontier; its row lock serialises appends across replicas
ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("frontier", LargeBinary, nullable=False),  # concatenated 32-byte hashes of root_needs(size)
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", TZ, nullable=False),
)

# C2SP tlog-cosignatures that counterparts returned for our checkpoints, kept beside them
cosignatures = Table(
    "cosignatures",
    metadata,
    Column("size", BigInteger, nullable=False),
    Column("witness", String(80), nullable=False),  # the cosigner's key name, "comity-witness/<authority id>"
    Column("line", Text, nullable=False),  # the signature line, ready to append to the checkpoint note
    Column("received_at", TZ, nullable=False),
    PrimaryKeyConstraint("size", "witness"),
)

# checkpoints of counterparts' ledgers that we verified consistent, newest last; the witness state per peer
peer_checkpoints = Table(
    "peer_checkpoints",
    metadata,
    Column("peer", String(40), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("verified_at", TZ, nullable=False),
    PrimaryKeyConstraint("peer", "size"),
)

# a counterpart whose ledger forked or was rewritten: we stop exchanging with it until an operator clears the alarm
peer_alarms = Table(
    "peer_alarms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer", String(40), nullable=False),
    Column("raised_at", TZ, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", String(500), nullable=False),
    Column("cleared_at", TZ, nullable=True),
    Column("cleared_by", String(64), nullable=True),
    Index("ix_peer_alarms_peer", "peer"),
)

# local users: role, clearance (a level of the marking scheme), caveat authorisations, unit (store/users.py)
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("clearance", String(64), nullable=False, server_default="UNCLASSIFIED"),
    Column("caveats", Text, nullable=False, server_default="[]"),  # canonical JSON list of caveat ids
    Column("unit", String(64), nullable=False, server_default=""),
    Column("password_hash", String(255), nullable=True),  # argon2id PHC string; NULL: token-only account
)

# bearer tokens, stored as SHA-256 of the token (tokens are 256-bit random, so a fast hash suffices)
tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("label", String(64), nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("expires_at", TZ, nullable=True),
    Column("revoked_at", TZ, nullable=True),
    Column("token_id", String(32), nullable=False, server_default=""),  # public id (not derived from the token)
    Column("scopes", Text, nullable=False, server_default=""),  # space-separated
    Index("ix_tokens_token_id", "token_id", unique=True),
    Index("ix_tokens_user_id", "user_id"),
)

# password logins under way or failed, for throttling; the attempted name is kept only as its SHA-256
login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username_sha256", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("attempted_at", TZ, nullable=False),
    Index("ix_login_attempts_username", "username_sha256", "attempted_at"),
    Index("ix_login_attempts_source", "source", "attempted_at"),
    Index("ix_login_attempts_time", "attempted_at"),
)

# small durable facts: highest directory serial seen, ...
settings_state = Table(
    "settings_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
