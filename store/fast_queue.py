"""The rows and guarded writes a connection holds for :mod:`store.fast` until they are written, and the SQL that
writes them: one ``INSERT ... SELECT * FROM unnest(...)`` CTE per table and column set, and the guarded writes'
locks, condition and statements, numbered from the first placeholder (the caller's own placeholders follow them).

No value is ever formatted into the text: table and column names come from store/tables.py, every value is a
placeholder.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

__all__ = ["Built", "Guarded", "GuardedSql", "Queue", "QueuedConditionFailed", "check_times"]

_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class GuardedSql:
    """Queued writes that apply all together or not at all: ``locks`` are CTEs that lock the rows they check,
    ``condition`` is true when every row is as the writes expect, and each of ``writes`` contains ``{guard}``
    where it must AND the expression that says they may apply; ``args`` are numbered from the ``first`` given."""

    locks: list[str]
    condition: str
    writes: list[str]
    args: list[Any]


@dataclass(frozen=True)
class Guarded:
    """A kind of guarded write (see :func:`store.fast.queue_guarded`): ``build(prefix, first, rows)`` makes its SQL
    for the rows queued, naming its CTEs with ``prefix``."""

    name: str
    build: Callable[[str, int, list[tuple[Any, ...]]], GuardedSql]


class QueuedConditionFailed(RuntimeError):
    """Guarded queued writes found a row not as they expected (another writer changed it): nothing was written."""


@dataclass
class Built:
    locks: list[str]  # placed first: they lock what the condition counts
    condition: str | None  # None: nothing guarded
    writes: list[str]
    args: list[Any]


class Queue:
    """Rows waiting to be inserted, by table and column set, in the order they were queued; and guarded writes."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.groups: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = {}
        self.guarded: dict[str, tuple[Guarded, list[tuple[Any, ...]]]] = {}

    def add(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        self.tables[table.name] = table
        for row in rows:
            self.groups.setdefault((table.name, tuple(row)), []).append(_values(row))

    def add_guarded(self, kind: Guarded, row: tuple[Any, ...]) -> None:
        check_times(row)
        self.guarded.setdefault(kind.name, (kind, []))[1].append(row)

    def rows(self) -> int:
        return sum(len(rows) for rows in self.groups.values()) + sum(len(r) for _, r in self.guarded.values())

    def statement(self, gate: str | None) -> Built:
        """The CTEs and their arguments, numbered from 1. Beside ``gate`` (the name of a CTE placed after the locks
        and before the writes, whose WHERE includes the condition), every write applies only if the gate returned a
        row; alone, only if the condition holds (an ``ok`` CTE the caller places after the locks)."""
        args: list[Any] = []
        locks: list[str] = []
        conditions: list[str] = []
        templates: list[str] = []
        for number, (kind, rows) in enumerate(self.guarded.values()):
            sql = kind.build(f"g{number}_", len(args) + 1, rows)
            args.extend(sql.args)
            locks.extend(sql.locks)
            conditions.append(f"({sql.condition})")
            templates.extend(sql.writes)
        condition = " AND ".join(conditions) or None
        # a CTE's name, or the ok CTE: no value is ever formatted into the text
        guard: str | None = None if condition is None else "(SELECT ok FROM ok)"
        if gate is not None:
            guard = f"EXISTS (SELECT 1 FROM {gate})"  # noqa: S608
        writes = [template.replace("{guard}", guard or "true") for template in templates]
        where = "" if guard is None else f" WHERE {guard}"
        for number, ((name, columns), values) in enumerate(self.groups.items()):
            table = self.tables[name]
            arrays = []
            for position, column in enumerate(columns):
                args.append([row[position] for row in values])
                arrays.append(f"${len(args)}::{_array_type(table, column)}")
            # names from store/tables.py and placeholders: no value is ever formatted into the text
            target = f"{name} ({', '.join(columns)})"
            rows_in = f"SELECT * FROM unnest({', '.join(arrays)}){where}"  # noqa: S608
            writes.append(f"q{number} AS (INSERT INTO {target} {rows_in})")
        return Built(locks, condition, writes, args)


@functools.lru_cache(maxsize=256)
def _array_type(table: Table, column: str) -> str:
    # without a length: an explicit cast to VARCHAR(36) would cut a longer value silently, where the column itself
    # refuses it as an INSERT's values would be refused
    return re.sub(r"\(\d+\)", "", table.c[column].type.compile(dialect=_DIALECT)) + "[]"


def _values(row: Mapping[str, Any]) -> list[Any]:
    values = list(row.values())
    check_times(values)
    return values


def check_times(values: Sequence[Any]) -> None:
    for value in values:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
