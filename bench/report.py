"""The readable table of a bench report, with each figure beside its target (docs/performance.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["TARGETS", "floor_line", "render", "verdicts"]

TARGETS = {
    "ratio": 0.1,  # flat-out end-to-end rate / raw round-trip rate, on PostgreSQL
    "p99_ms": 50.0,  # end-to-end p99 at 100 envelopes/s
    "rss_mib": 150.0,  # peak resident set per gateway with a 1 GiB attachment
}


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}" if abs(value) < 100 else f"{value:,.0f}{suffix}"
    return f"{value}{suffix}"


def _pcts(values: dict[str, float]) -> str:
    return "/".join(_fmt(values.get(key)) for key in ("p50", "p95", "p99"))


def _cpu(values: dict[str, float]) -> str:
    names = [n for n in ("sender", "receiver", "postgres", "bench", "others") if n in values]
    return " ".join(f"{n[:4]} {values[n]:.2f}" for n in names)


def _busy(cpu: dict[str, float], cpus: int) -> str:
    if not cpu.get("wall"):
        return ""
    return f"  (machine {100 * cpu['machine'] / (cpu['wall'] * cpus):.0f}% busy)"


def verdicts(report: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, target, met) for every target the report has a figure for."""
    rows: list[tuple[str, str, str, bool | None]] = []
    for backend in report["backends"]:
        name = backend["backend"]
        raw_rate = float(backend.get("raw", report["raw"])["rate"])
        flat = backend.get("flat_out")
        if flat:
            ratio = flat["rate"] / raw_rate
            binding = name == "postgresql"
            rows.append(
                (
                    f"{name}: flat-out rate / raw beside it",
                    f"{flat['rate']:,.0f}/s / {raw_rate:,.0f}/s = {ratio:.3f}",
                    f">= {TARGETS['ratio']}" + ("" if binding else " (target is for PostgreSQL)"),
                    ratio >= TARGETS["ratio"] if binding else None,
                )
            )
        probe = backend.get("probe")
        if probe:
            rows.append(
                (
                    f"{name}: p99 at {probe['target_rate']:g}/s (light probe)",
                    f"{probe['e2e_ms']['p99']:,.1f} ms (achieved {probe['rate']:,.1f}/s)",
                    "(no target: latency without queueing)",
                    None,
                )
            )
        fixed = backend.get("fixed_rate")
        if fixed:
            p99 = fixed["e2e_ms"]["p99"]
            rows.append(
                (
                    f"{name}: p99 at {fixed['target_rate']:g}/s",
                    f"{p99:,.1f} ms (achieved {fixed['rate']:,.1f}/s)",
                    f"< {TARGETS['p99_ms']:g} ms",
                    p99 < TARGETS["p99_ms"],
                )
            )
        big = backend.get("attachment")
        if big:
            for side in ("sender", "receiver"):
                peak = big["peak_rss_mib"][side]
                rows.append(
                    (
                        f"{name}: {big['bytes'] / 2**20:,.0f} MiB attachment, {side} peak RSS",
                        f"{peak:,.1f} MiB",
                        f"< {TARGETS['rss_mib']:g} MiB",
                        peak < TARGETS["rss_mib"],
                    )
                )
    return rows


def floor_line(floor: dict[str, Any]) -> str:
    """One line for a ``bench.floor.Floor``: the CPU per envelope the target allows, what JOSE and two raw round
    trips take of it, and what Comity's own work took flat out (PostgreSQL's share named)."""
    took = ""
    if floor["own_ms"] is not None:
        postgres = "" if floor["postgres_ms"] is None else f", PostgreSQL {floor['postgres_ms']:.2f} of it"
        took = f"; flat out it took {floor['own_ms']:.2f} ms of the {floor['measured_ms']:.2f} measured{postgres}"
    return (
        f"floor: {floor['ratio']:g} of raw = {floor['target_rate']:,.0f} env/s allows {floor['budget_ms']:.2f} ms "
        f"of CPU per envelope on {floor['cpus']} cores; JOSE {floor['jose_ms']:.2f} + two raw round trips "
        f"{floor['http_ms']:.2f} (without TLS) = {floor['floor_ms']:.2f} ms, leaving {floor['left_ms']:.2f} ms for "
        f"Comity's own work{took}"
    )


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    raw = report["raw"]
    lines = [
        f"Comity bench {report['date']}  ({machine['cpus']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"aiohttp {machine['aiohttp']}, PostgreSQL {machine.get('postgresql') or '-'})",
        f"command: {report['command']}",
        f"code: {report['code']['source']} at commit {report['code']['commit'][:12]} "
        f"({report['code']['dirty_product_files']} product files modified in the working tree at the time)"
        if report.get("code")
        else "",
        "",
        f"raw aiohttp round trip, {report['body_bytes']} B JSON POST, 32 keep-alive tasks: {raw['rate']:,.0f} req/s "
        f"(server CPU {raw['server_cpu_s']} s, client CPU {raw['client_cpu_s']} s, others {raw.get('others_cpu_s')} s "
        f"over {raw['seconds']} s)",
        "",
        f"{'backend':<11}{'mode':<12}{'msgs':>6}{'env/s':>9}{'vs raw':>8}  {'e2e p50/p95/p99 ms':<22}"
        f"{'ledger p50/p95/p99':<22}{'submit p50/p99':<16}CPU ms per envelope",
    ]
    for backend in report["backends"]:
        braw = backend.get("raw", raw)
        for key in ("probe", "fixed_rate", "flat_out"):
            r = backend.get(key)
            if not r:
                continue
            submit = f"{_fmt(r['submit_ms'].get('p50'))}/{_fmt(r['submit_ms'].get('p99'))}"
            mode = f"{r['target_rate']:g}/s" if r["target_rate"] else "flat out"
            lines.append(
                f"{backend['backend']:<11}{mode:<12}{r['messages']:>6}{r['rate']:>9,.1f}"
                f"{r['rate'] / braw['rate']:>8.3f}  {_pcts(r['e2e_ms']):<22}{_pcts(r['ledger_ms']):<22}"
                f"{submit:<16}{_cpu(r['cpu_ms_per_message'])}{_busy(r['cpu_s'], machine['cpus'])}"
            )
    for backend in report["backends"]:
        if backend.get("raw"):
            r = backend["raw"]
            lines.append(
                f"{backend['backend']:<11}raw baseline beside flat out: {r['rate']:,.0f} req/s "
                f"(others took {r.get('others_cpu_s')} CPU s of {r['seconds'] * machine['cpus']:.0f}); "
                "'vs raw' above uses it"
            )
        if backend.get("floor"):
            lines.append(f"{backend['backend']:<11}{floor_line(backend['floor'])}")
        if backend.get("error"):
            lines.append(f"{backend['backend']:<11}FAILED: {backend['error']}")
    bigs = [(b["backend"], b["attachment"]) for b in report["backends"] if b.get("attachment")]
    if bigs:
        lines += ["", "large attachment (MB = 10^6 bytes; peak RSS = VmHWM, MiB)"]
        for name, big in bigs:
            lines.append(
                f"{name:<11}{big['bytes'] / 2**20:,.0f} MiB: end to end {big['end_to_end_s']} s = "
                f"{big['end_to_end_mb_s']} MB/s (upload+encrypt {big['submit_s']} s, deliver {big['deliver_s']} s); "
                f"download {big['download_s']} s = {big['download_mb_s']} MB/s; sha256 ok {big['sha256_ok']}"
            )
            lines.append(
                f"{'':<11}peak RSS sender {big['peak_rss_mib']['sender']}, receiver {big['peak_rss_mib']['receiver']}"
                f" (transfer {big['peak_rss_transfer_mib']}, download {big['peak_rss_download_mib']}, "
                f"RSS before {big['rss_before_mib']})"
            )
    lines += [
        "",
        "env/s: envelopes per second, first submit to last receipt; e2e: POST start to the sender's ledger time of",
        "the receipt; ledger: ledger time of message.submitted to message.receipt_recorded; CPU per envelope by",
        "process over the phase (others: the rest of the machine meanwhile).",
        "",
        "targets",
    ]
    for what, measured, target, met in verdicts(report):
        mark = "n/a" if met is None else ("MET" if met else "NOT MET")
        lines.append(f"  {what:<51} {measured:<39} {target:<45} {mark}")
    return "\n".join(lines)
