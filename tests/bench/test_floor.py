"""bench.floor: the share of the throughput target's CPU budget that the mandated libraries take."""

from __future__ import annotations

import pytest

from bench.floor import JoseCost, floor, jose_cost
from bench.report import floor_line

RAW = {"rate": 5000.0, "requests": 25_000, "server_cpu_s": 3.0, "client_cpu_s": 5.0, "seconds": 5.0}
FLAT = {"sender": 4.0, "receiver": 3.0, "postgres": 1.5, "bench": 0.4, "others": 0.25}


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
    assert result.target_rate == 500.0  # a tenth of the raw rate
    assert result.budget_ms == 4.0  # two cores at 500 envelopes/s
    assert result.http_ms == pytest.approx(0.64)  # two round trips of (3 + 5) s / 25,000
    assert result.postgres_ms == 1.5
    assert result.floor_ms == pytest.approx(4.14)
    assert result.left_ms == pytest.approx(-0.14)
    assert result.measured_ms == pytest.approx(8.9)  # every process but the rest of the machine


def test_without_postgresql_or_a_flat_out_phase_the_floor_is_jose_and_http() -> None:
    result = floor(raw=RAW, jose=JoseCost({"all": 1.0}, 1.0), cpus=4)
    assert result.budget_ms == 8.0
    assert result.postgres_ms is None and result.measured_ms is None
    assert result.floor_ms == pytest.approx(1.64)
    line = floor_line(result.__dict__)
    assert "PostgreSQL" not in line and "measured" not in line
    assert "500 env/s allows 8.00 ms of CPU per envelope on 4 cores" in line


def test_the_report_line_names_every_part() -> None:
    result = floor(raw=RAW, jose=JoseCost({"all": 2.0}, 2.0), cpus=2, flat_cpu_ms=FLAT)
    assert floor_line(result.__dict__) == (
        "floor: 0.1 of raw = 500 env/s allows 4.00 ms of CPU per envelope on 2 cores; JOSE 2.00 + two raw round "
        "trips 0.64 + PostgreSQL 1.50 = 4.14 ms, leaving -0.14 ms for the rest; measured flat out 8.90 ms"
    )
