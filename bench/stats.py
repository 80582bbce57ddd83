"""``python -m bench.stats``: every statistic over 100,000 generated cases, on PostgreSQL (and SQLite).

1. In a fresh PostgreSQL schema (or a SQLite file), migrated to head and dropped at the end, generate ``--cases``
   realistic cases (:func:`generate`: eight years of growing volume, 60 counterparts in 30 countries with a long
   tail, the request types, legal bases, offences and assistance in the proportions a central authority sees,
   waiting times drawn from log-normal distributions, older cases more often decided and closed, 40 officers) and
   bulk insert them straight into ``users``, ``cases``, ``case_assignments``, ``case_stats`` and ``case_dates``
   (critical dates and tasks for four cases in ten, a backlog of them past due); then
   ``VACUUM ANALYZE`` (what autovacuum does to a table that grew).
2. Time every statistic (store/stats.py ``compute``, the API's and the command's code) ``--runs`` times, without
   filters and with a typical filter set (incoming, from a year, one offence), after one warm-up run each; report
   p50 and max per statistic and whether the max is under ``--target-ms`` (300).

Prints a table and writes bench/out/stats-*.json; exits non-zero when a statistic misses the target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.schemas import drop_schemas, new_database
from protocol.lifecycle import RefusalGround
from protocol.requests import AssistanceSought, RequestType
from protocol.stats import (
    ASSISTANCE_BITS,
    OFFENCE_BITS,
    REFUSAL_GROUND_BITS,
    Filters,
    Statistic,
    mask_of,
    parse_filters,
)
from store.db import make_engine, run_migrations
from store.stats import compute
from store.tables import case_assignments, case_dates, case_stats, cases, users

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FILTERED: dict[str, str] = {"direction": "incoming", "from": "2022", "offence": "23"}

_TYPES = {
    RequestType.MLA_CRIMINAL: 55,
    RequestType.SERVICE_OF_DOCUMENTS: 9,
    RequestType.EXTRADITION: 9,
    RequestType.FREEZING: 8,
    RequestType.CONFISCATION: 5,
    RequestType.SPONTANEOUS_INFORMATION: 4,
    RequestType.PROVISIONAL_ARREST: 3,
    RequestType.MLA_CIVIL_ADMINISTRATIVE: 4,
    RequestType.RETURN_OF_ASSETS: 3,
}
_UNCAC_ARTICLE = {
    RequestType.EXTRADITION: 44,
    RequestType.PROVISIONAL_ARREST: 44,
    RequestType.FREEZING: 54,
    RequestType.CONFISCATION: 55,
    RequestType.RETURN_OF_ASSETS: 57,
    RequestType.MLA_CIVIL_ADMINISTRATIVE: 43,
}
_OFFENCES = {"15": 20, "16(1)": 6, "16(2)": 2, "17": 18, "18": 3, "19": 5, "20": 4, "21": 3, "22": 3, "23": 30, "24": 2}
_OFFENCES["25"] = 1
_COUNTRIES = [
    "AR",
    "BR",
    "CL",
    "CO",
    "MX",
    "PE",
    "UY",
    "PY",
    "BO",
    "EC",
    "US",
    "CA",
    "GB",
    "FR",
    "DE",
    "ES",
    "IT",
    "PT",
    "NL",
    "BE",
    "CH",
    "AT",
    "SE",
    "NO",
    "DK",
    "PL",
    "RO",
    "GR",
    "TR",
    "RU",
    "CN",
    "JP",
    "KR",
    "IN",
    "ID",
    "MY",
    "PH",
    "TH",
    "VN",
    "AU",
    "NZ",
    "ZA",
    "NG",
    "KE",
    "EG",
]


@dataclass
class Generated:
    users: list[dict[str, Any]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    dates: list[dict[str, Any]] = field(default_factory=list)  # case-work critical dates and tasks


def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _hours(rng: random.Random, median_hours: float, sigma: float = 1.0) -> timedelta:
    return timedelta(hours=median_hours * rng.lognormvariate(0, sigma))


def generate(n: int, *, seed: int = 7, now: datetime = NOW) -> Generated:
    """``n`` cases over the eight years up to ``now``, deterministic for a seed."""
    rng = random.Random(seed)
    dates_rng = random.Random(seed + 1)  # its own stream: the cases are the same with or without case work
    out = Generated()
    officers = 40
    for i in range(officers):
        out.users.append({"id": i + 1, "username": f"officer{i + 1:02d}", "role": "officer", "created_at": now})
    counterparts = [f"{c.lower()}.{s}" for c in _COUNTRIES for s in ("mj", "pg")][:60]
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(counterparts))]
    years = list(range(now.year - 7, now.year + 1))
    year_weights = [1.0 + 0.15 * k for k in range(len(years))]
    never_alone = (RefusalGround.BANK_SECRECY, RefusalGround.FISCAL_MATTERS)  # 46(8), 46(22)
    grounds = [g.value for g in RefusalGround if g not in never_alone]
    assistance = [a.value for a in AssistanceSought]
    for _ in range(n):
        year = rng.choices(years, weights=year_weights)[0]
        start = datetime(year, 1, 1, tzinfo=UTC)
        end = min(datetime(year + 1, 1, 1, tzinfo=UTC), now)
        opened = start + timedelta(seconds=rng.uniform(0, (end - start).total_seconds()))
        case_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        direction = "in" if rng.random() < 0.55 else "out"
        counterpart = rng.choices(counterparts, weights=weights)[0]
        request_type: RequestType = _pick(rng, _TYPES)
        basis = rng.choices(["uncac", "treaty", "reciprocity", None], weights=[35, 45, 15, 5])[0]
        article = _UNCAC_ARTICLE.get(request_type, 46) if basis == "uncac" else None
        start_at = opened if direction == "in" else opened + timedelta(seconds=rng.uniform(1, 600))
        age = now - opened
        row: dict[str, Any] = {
            "case_id": case_id,
            "direction": direction,
            "counterpart": counterpart,
            "country": counterpart[:2].upper(),
            "opened_at": opened,
            "year": opened.year,
            "request_type": request_type.value,
            "legal_basis": basis,
            "uncac_article": article,
            "urgent": rng.random() < 0.1,
            "refusal_grounds": 0,
            "deadline": (opened + timedelta(days=rng.randint(30, 240))).date() if rng.random() < 0.6 else None,
            "state": "sent" if direction == "out" else "received",
            "outcome": None,
            "start_at": start_at,
            "acknowledged_at": None,
            "first_answer_at": None,
            "executed_at": None,
            "outcome_at": None,
            "closed_at": None,
        }
        offences = rng.sample(list(_OFFENCES), k=rng.choice((1, 1, 1, 2, 2, 3)), counts=list(_OFFENCES.values()))
        row["offences"] = mask_of(set(offences), OFFENCE_BITS)
        row["assistance"] = mask_of(set(rng.sample(assistance, k=rng.choice((1, 1, 2, 3)))), ASSISTANCE_BITS)
        _milestones(rng, row, start_at, age, grounds)
        for wait, milestone in (
            ("wait_acknowledge_ms", "acknowledged_at"),
            ("wait_first_answer_ms", "first_answer_at"),
            ("wait_execution_ms", "executed_at"),
        ):  # as store/case_stats.py keeps them
            reached = row[milestone]
            row[wait] = None if reached is None else (reached - start_at) // timedelta(milliseconds=1)
        out.stats.append(row)
        out.cases.append(
            {
                "id": case_id,
                "unit": "mla",
                "created_at": opened,
                "state": row["state"],
                "request_type": request_type.value,
                "last_action_at": opened,
            }
        )
        row["officer_id"] = None
        if direction == "out" or rng.random() < 0.85:
            for officer in rng.sample(range(1, officers + 1), k=1 if rng.random() < 0.9 else 2):
                out.assignments.append(
                    {"case_id": case_id, "user_id": officer, "assigned_by": "user:sam", "assigned_at": opened}
                )
                row["officer_id"] = officer  # the latest assigned, as store/cases.py keeps it
        _dates(dates_rng, out.dates, row, now)
    return out


_DATE_KINDS = {"deadline": 5, "hearing": 3, "statute-of-limitations": 2, "surrender-date": 1, "custom": 2}


def _dates(rng: random.Random, dates: list[dict[str, Any]], row: dict[str, Any], now: datetime) -> None:
    """Case work for four cases in ten: one to three critical dates or tasks; those of decided cases are done, and
    of the rest most of those already due (a backlog remains: the overdue statistic has something to find)."""
    if rng.random() >= 0.4:
        return
    opened: datetime = row["opened_at"]
    for _ in range(rng.choice((1, 1, 2, 3))):
        due = (opened + timedelta(days=rng.randint(10, 400))).date()
        done = row["outcome"] is not None or (due < now.date() and rng.random() < 0.9)
        dates.append(
            {
                "case_id": row["case_id"],
                "kind": _pick(rng, _DATE_KINDS),
                "due": due,
                "note": None,
                "created_by": "user:sam",
                "created_at": opened,
                "done_at": now if done else None,
                "done_by": "user:sam" if done else None,
            }
        )


def _milestones(
    rng: random.Random,
    row: dict[str, Any],
    start: datetime,
    age: timedelta,
    grounds: Sequence[str],
) -> None:
    """Walk a case through its life as far as its age allows: acknowledged, answered, decided, closed."""
    at = start + _hours(rng, 72)
    if at - start > age or rng.random() < 0.03:
        return
    row["acknowledged_at"], row["state"] = at, "acknowledged"
    at += _hours(rng, 24 * 45, 0.9)
    if at - start > age:
        row["state"] = "under_review"
        return
    row["first_answer_at"], row["state"] = at, "in_execution"
    decided = at + _hours(rng, 24 * 90, 0.8)
    if decided - start > age:
        return
    outcome = rng.choices(["executed", "refused", "withdrawn"], weights=[80, 12, 8])[0]
    row["outcome"], row["outcome_at"], row["state"] = outcome, decided, outcome
    if outcome == "executed":
        row["executed_at"] = decided
    if outcome == "refused":
        row["refusal_grounds"] = mask_of(set(rng.sample(list(grounds), k=rng.choice((1, 1, 2)))), REFUSAL_GROUND_BITS)
    closed = decided + _hours(rng, 24 * 20)
    if closed - start <= age and rng.random() < 0.7:
        row["closed_at"], row["state"] = closed, "closed"


async def load(engine: AsyncEngine, data: Generated, *, chunk: int = 5000) -> None:
    """Bulk insert the generated rows (executemany in chunks), then refresh the planner's statistics."""
    for table, rows in (
        (users, data.users),
        (cases, data.cases),
        (case_assignments, data.assignments),
        (case_stats, data.stats),
        (case_dates, data.dates),
    ):
        for i in range(0, len(rows), chunk):
            async with engine.begin() as conn:
                await conn.execute(insert(table), rows[i : i + chunk])
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE"))
    else:
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))


async def time_statistics(
    engine: AsyncEngine, *, runs: int, queries: dict[str, Filters], today: date
) -> list[dict[str, Any]]:
    """Each statistic under each filter set: one warm-up, then ``runs`` timed runs (ms)."""
    results = []
    async with engine.connect() as conn:
        for label, filters in queries.items():
            for statistic in Statistic:
                await compute(conn, statistic, filters, today=today)
                times = []
                rows = 0
                for _ in range(runs):
                    started = time.perf_counter()
                    table = await compute(conn, statistic, filters, today=today)
                    times.append((time.perf_counter() - started) * 1000)
                    rows = len(table.rows)
                results.append(
                    {
                        "statistic": statistic.value,
                        "filters": label,
                        "rows": rows,
                        "p50_ms": round(statistics.median(times), 1),
                        "max_ms": round(max(times), 1),
                    }
                )
    return results


async def run_backend(backend: str, n: int, runs: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url, schema = await new_database(backend, Path(tmp), "stats")
        try:
            await run_migrations(url)
            engine = make_engine(url)
            try:
                started = time.perf_counter()
                data = generate(n, seed=seed)
                generated = time.perf_counter() - started
                started = time.perf_counter()
                await load(engine, data)
                loaded = time.perf_counter() - started
                queries = {"none": Filters(), "filtered": parse_filters(FILTERED)}
                timings = await time_statistics(engine, runs=runs, queries=queries, today=NOW.date())
            finally:
                await engine.dispose()
        finally:
            await drop_schemas([schema])
    return {
        "backend": backend,
        "cases": n,
        "assignments": len(data.assignments),
        "dates": len(data.dates),
        "generate_s": round(generated, 1),
        "load_s": round(loaded, 1),
        "runs": runs,
        "filtered": FILTERED,
        "timings": timings,
    }


def _report(result: dict[str, Any], target_ms: float) -> bool:
    print(
        f"\n{result['backend']}: {result['cases']} cases, {result['assignments']} assignments,"
        f" {result.get('dates', 0)} case-work dates;"
        f" generated in {result['generate_s']} s, loaded in {result['load_s']} s; {result['runs']} runs each"
    )
    print(f"{'statistic':<20} {'filters':<9} {'rows':>5} {'p50 ms':>8} {'max ms':>8}")
    ok = True
    for t in result["timings"]:
        late = t["max_ms"] >= target_ms
        ok = ok and not late
        flag = "  over target" if late else ""
        print(f"{t['statistic']:<20} {t['filters']:<9} {t['rows']:>5} {t['p50_ms']:>8} {t['max_ms']:>8}{flag}")
    worst = max(result["timings"], key=lambda t: t["max_ms"])
    print(f"slowest: {worst['statistic']} ({worst['filters']}) max {worst['max_ms']} ms; target < {target_ms} ms")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="postgresql")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=300.0)
    args = parser.parse_args(argv)
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    results = [asyncio.run(run_backend(b, args.cases, args.runs, args.seed)) for b in backends]
    ok = True
    for result in results:
        ok = _report(result, args.target_ms) and ok
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"stats-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({"target_ms": args.target_ms, "results": results}, indent=2, default=str))
    print(f"written {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
