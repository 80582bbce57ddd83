"""bench.stats cannot rot: its generator, bulk load and timing loop on a few hundred cases, on both backends, and
the generated data is consistent with what the statistics report."""

from __future__ import annotations

from collections import Counter

from bench.stats import NOW, generate, load, time_statistics
from protocol.stats import CLOSED_STATES, Filters, Statistic
from store.db import make_engine, run_migrations
from store.stats import compute


async def test_the_generator_loads_and_every_statistic_answers(db_url: str) -> None:
    data = generate(300, seed=3)
    assert len(data.stats) == len(data.cases) == 300
    assert generate(300, seed=3).stats == data.stats  # deterministic for a seed
    await run_migrations(db_url)
    engine = make_engine(db_url)
    try:
        await load(engine, data, chunk=128)
        timings = await time_statistics(engine, runs=1, queries={"none": Filters()}, today=NOW.date())
        assert [t["statistic"] for t in timings] == [s.value for s in Statistic]
        async with engine.connect() as conn:
            by_year = await compute(conn, Statistic.BY_YEAR, Filters(), today=NOW.date())
            open_closed = await compute(conn, Statistic.OPEN_CLOSED, Filters(), today=NOW.date())
            durations = await compute(conn, Statistic.DURATIONS, Filters(), today=NOW.date())
    finally:
        await engine.dispose()
    expected = Counter(({"in": "incoming", "out": "outgoing"}[r["direction"]], r["year"]) for r in data.stats)
    assert {(row[0], row[1]): row[2] for row in by_year.rows} == expected
    closed = sum(1 for r in data.stats if r["state"] in CLOSED_STATES)
    assert sum(row[2] for row in open_closed.rows if row[1] == "closed") == closed
    acknowledged = sum(1 for r in data.stats if r["acknowledged_at"] is not None)
    assert sum(row[2] for row in durations.rows if row[1] == "acknowledge") == acknowledged
    for row in durations.rows:
        if row[2]:
            assert 0 < row[3] <= row[4], row  # median before p90, waits are positive
