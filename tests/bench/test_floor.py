"""bench.floor: the share of the throughput target's CPU budget that the mandated libraries take."""

from __future__ import annotations

import dataclasses

import pytest

from bench.floor import JoseCost, floor, jose_cost
from bench.report import floor_line

RAW = {"rate": 5000.0, "requests": 25_000, "server_cpu_s": 3.0, "client_cpu_s": 5.0, "seconds": 5.0}
# as LoadResult.cpu_ms_per_message gives it: each process, the rest of the machine, and the machine's total
FLAT = {"sender": 4.0, "receiver": 3.0, "postgres": 1.5, "bench": 0.4, "others": 0.25, "machine": 9.15}


def test_the_seven_operations_of_an_envelope_are_timed_each() -> None:
    cost = jose_cost(rounds=5)
    assert list(cost.operations_ms) == [
        "sender: sign the message",
        "sender: seal to the recipient",
        "sender: seal the archive copy",
        "receiver: decrypt",
        "receiver: verify the message",
        "receiver: sign the receipt",
        "sender: verify the receipt",
    ]
    # each is real cryptography: an Ed25519 signature or an X25519 agreement costs tens of microseconds at least
    assert all(ms > 0.01 for ms in cost.operations_ms.values()), cost.operations_ms
    assert cost.total_ms == pytest.approx(sum(cost.operations_ms.values()), abs=0.002)
    # a seal (a fresh X25519 key, an agreement, a key wrap, AES-GCM) costs more than a signature
    assert cost.operations_ms["sender: seal to the recipient"] > cost.operations_ms["sender: sign the message"]


def test_the_floor_is_the_budget_the_target_allows_against_what_the_libraries_take() -> None:
    result = floor(raw=RAW, jose=JoseCost({"all": 2.0}, 2.0), cpus=2, flat_cpu_ms=FLAT)
    assert result.ratio == 0.1
    assert result.target_rate == 500.0  # a tenth of the raw rate
    assert result.budget_ms == 4.0  # two cores at 500 envelopes/s
    assert result.http_ms == pytest.approx(0.64)  # two round trips of (3 + 5) s / 25,000
    assert result.floor_ms == pytest.approx(2.64)
    assert result.left_ms == pytest.approx(1.36)
    assert result.measured_ms == pytest.approx(8.9)  # every process of the exchange, not "others" nor "machine"
    assert result.own_ms == pytest.approx(6.26)
    assert result.postgres_ms == 1.5


def test_another_ratio_and_no_flat_out_phase() -> None:
    result = floor(raw=RAW, jose=JoseCost({"all": 1.0}, 1.0), cpus=4, ratio=0.05)
    assert result.target_rate == 250.0 and result.budget_ms == 16.0
    assert result.floor_ms == pytest.approx(1.64)
    assert result.measured_ms is None and result.own_ms is None and result.postgres_ms is None
    line = floor_line(dataclasses.asdict(result))
    assert "flat out" not in line
    assert line.startswith("floor: 0.05 of raw = 250 env/s allows 16.00 ms of CPU per envelope on 4 cores;")


def test_the_report_line_names_every_part() -> None:
    result = floor(raw=RAW, jose=JoseCost({"all": 2.0}, 2.0), cpus=2, flat_cpu_ms=FLAT)
    assert floor_line(dataclasses.asdict(result)) == (
        "floor: 0.1 of raw = 500 env/s allows 4.00 ms of CPU per envelope on 2 cores; JOSE 2.00 + two raw round "
        "trips 0.64 (without TLS) = 2.64 ms, leaving 1.36 ms for Comity's own work; flat out it took 6.26 ms of the "
        "8.90 measured, PostgreSQL 1.50 of it"
    )
