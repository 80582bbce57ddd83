"""What /proc says about a process: peak and current resident memory, CPU time; and PostgreSQL's CPU time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "cpu_seconds", "machine_busy_seconds", "memory", "postgres_cpu_by_pid", "reset_peak"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    peak_mib: float  # VmHWM: the high-water mark of the resident set since start (or the last reset_peak)
    current_mib: float  # VmRSS


def memory(pid: int) -> Memory:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in {"VmHWM", "VmRSS"}:
            values[name] = int(rest.split()[0]) / 1024  # kB
    return Memory(values.get("VmHWM", 0.0), values.get("VmRSS", 0.0))


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current resident set (proc(5), /proc/pid/clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _stat_fields(pid: int | str) -> tuple[str, list[str]]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    return comm, raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads)."""
    _, fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of proc(5))


def postgres_cpu_by_pid() -> dict[int, float]:
    """CPU time of each ``postgres`` process, by pid.

    Compare two readings pid by pid (:class:`CpuMeter`): a backend that exits between them takes its time with it,
    and with totals alone one exit could hide everything the others spent. Other clients of the same server would
    be counted too.
    """
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, fields = _stat_fields(entry.name)
        except (OSError, ValueError):
            continue
        if comm == "postgres":
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (all CPUs), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK


class CpuMeter:
    """CPU seconds spent by a few processes (and PostgreSQL, and this process) between start() and stop()."""

    def __init__(self, pids: dict[str, int], *, postgres: bool) -> None:
        self.pids = pids
        self.postgres = postgres
        self._start: dict[str, float] = {}
        self._postgres: list[dict[int, float]] = []

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        values["bench"] = cpu_seconds(os.getpid())
        if self.postgres:
            self._postgres.append(postgres_cpu_by_pid())
            values["postgres"] = 0.0  # computed pid by pid in stop()
        values["machine"] = machine_busy_seconds()
        values["wall"] = time.monotonic()
        return values

    def start(self) -> None:
        self._postgres = []
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        spent = {name: round(end[name] - self._start[name], 3) for name in end}
        if self.postgres:  # pid by pid; backends that exit meanwhile take their time with them: a lower bound
            before, after = self._postgres[0], self._postgres[-1]
            spent["postgres"] = round(sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items()), 3)
        # what other processes (concurrent tests, the system) took from the same cores meanwhile
        ours = sum(value for name, value in spent.items() if name not in {"machine", "wall"})
        spent["others"] = round(max(0.0, spent["machine"] - ours), 3)
        return spent
