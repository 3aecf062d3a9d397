"""Targets, the printed table and the JSON file of a bench run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Memory is "flat with backlog" when the sidecar draining the large backlog
# peaks at most this much above the one draining the small backlog.
FLAT_FACTOR = 1.10


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure it was judged on."""
    out: list[dict[str, Any]] = []

    def add(key: str, what: str, figure: str, met: bool) -> None:
        out.append({"id": key, "target": what, "figure": figure, "met": bool(met)})

    track = r.get("track", {}).get("16")
    if track:
        side = track["sidecar"]
        add("b", "/v1/track, 16 clients, durable: >= 0.6 x ceiling and p99 <= 5 ms",
            f"{track['ratio']:.2f} x ceiling ({side['rps']:,.0f} / "
            f"{track['ceiling']['rps']:,.0f} req/s), p99 {side['p99_ms']:.2f} ms",
            track["ratio"] >= 0.6 and side["p99_ms"] <= 5.0)
    batch = r.get("batch")
    if batch:
        eps = batch["sidecar"]["events_per_s"]
        add("c", "/v1/batch (100 events): >= 50,000 events/s", f"{eps:,.0f} events/s",
            eps >= 50_000)
    e2e = r.get("e2e", {})
    if "0ms" in e2e:
        v = e2e["0ms"]["events_per_s"]
        add("d0", "end to end, 0 ms Graph latency: >= 30,000 events/s", f"{v:,.0f} events/s",
            v >= 30_000)
    if "100ms" in e2e:
        v = e2e["100ms"]["events_per_s"]
        add("d100", "end to end, 100 ms Graph latency: >= 10,000 events/s",
            f"{v:,.0f} events/s", v >= 10_000)
    drain = r.get("drain")
    if drain:
        add("e", f"drain rate, {drain['big']['backlog']:,} vs {drain['small']['backlog']:,} "
                 "backlog: ratio >= 0.8",
            f"{drain['ratio']:.2f} ({drain['big']['events_per_s']:,.0f} vs "
            f"{drain['small']['events_per_s']:,.0f} events/s)", drain["ratio"] >= 0.8)
    mem = r.get("memory", {})
    if "idle_mib" in mem:
        add("f-idle", "RSS idle <= 60 MiB", f"{mem['idle_mib']:.1f} MiB", mem["idle_mib"] <= 60)
    if "peak_mib" in mem:
        add("f-peak", "RSS peak under load <= 120 MiB", f"{mem['peak_mib']:.1f} MiB",
            mem["peak_mib"] <= 120)
    if "backlog_big_hwm_mib" in mem:
        big, small = mem["backlog_big_hwm_mib"], mem["backlog_small_hwm_mib"]
        add("f-flat", f"RSS flat with backlog (large <= {FLAT_FACTOR:.2f} x small, "
                      "and <= 120 MiB)",
            f"{big:.1f} vs {small:.1f} MiB ({big / small if small else 0:.2f} x)",
            small > 0 and big <= small * FLAT_FACTOR and big <= 120)
    sdk = r.get("sdk")
    if sdk and "0ms" in e2e:
        ratio = e2e["0ms"]["events_per_s"] / sdk["events_per_s"] if sdk["events_per_s"] else 0
        add("g", "end to end (0 ms) >= 50 x the official SDK path",
            f"{ratio:.1f} x ({e2e['0ms']['events_per_s']:,.0f} vs "
            f"{sdk['events_per_s']:,.0f} events/s)", ratio >= 50)
    return out


def _row(key: str, what: str, figure: str, reference: str, ratio: str) -> str:
    return f"{key:<3} {what:<34} {figure:<34} {reference:<30} {ratio:>7}"


def _lat(load: dict[str, Any]) -> str:
    return f"p50 {load['p50_ms']:.2f} p99 {load['p99_ms']:.2f} ms"


def table(r: dict[str, Any]) -> str:
    lines = [_row("", "measurement", "figure", "reference (same run)", "ratio"), "-" * 112]
    for level, m in r.get("track", {}).items():
        ceil, side = m["ceiling"], m["sidecar"]
        lines.append(_row("a", f"ceiling, {level} clients", f"{ceil['rps']:,.0f} req/s "
                          f"{_lat(ceil)}", "-", ""))
        lines.append(_row("b", f"/v1/track, {level} clients", f"{side['rps']:,.0f} req/s "
                          f"{_lat(side)}", f"ceiling {ceil['rps']:,.0f} req/s",
                          f"{m['ratio']:.2f}"))
    if "batch" in r:
        b = r["batch"]
        lines.append(_row("c", f"/v1/batch x100, {b['sidecar']['connections']} clients",
                          f"{b['sidecar']['events_per_s']:,.0f} events/s",
                          f"ceiling {b['ceiling']['events_per_s']:,.0f} ev/s",
                          f"{b['ratio']:.2f}"))
    sdk_rate = r.get("sdk", {}).get("events_per_s", 0)
    for label, e in r.get("e2e", {}).items():
        ratio = f"{e['events_per_s'] / sdk_rate:.1f}x" if sdk_rate else ""
        lines.append(_row("d", f"end to end, Graph +{label}",
                          f"{e['events_per_s']:,.0f} events/s",
                          f"SDK path {sdk_rate:,.0f} ev/s" if sdk_rate else "-", ratio))
    if "drain" in r:
        d = r["drain"]
        lines.append(_row("e", f"drain, {d['big']['backlog']:,} backlog",
                          f"{d['big']['events_per_s']:,.0f} events/s",
                          f"{d['small']['backlog']:,}: {d['small']['events_per_s']:,.0f} ev/s",
                          f"{d['ratio']:.2f}"))
    mem = r.get("memory", {})
    if mem:
        lines.append(_row("f", "RSS idle / peak", f"{mem.get('idle_mib', 0):.1f} / "
                          f"{mem.get('peak_mib', 0):.1f} MiB", "-", ""))
    if "backlog_big_hwm_mib" in mem:
        big, small = mem["backlog_big_hwm_mib"], mem["backlog_small_hwm_mib"]
        lines.append(_row("f", "RSS peak draining backlog", f"{big:.1f} MiB",
                          f"small backlog {small:.1f} MiB", f"{big / small if small else 0:.2f}"))
    if "sdk" in r:
        s = r["sdk"]
        lines.append(_row("g", f"official SDK, {s['threads']} threads",
                          f"{s['events_per_s']:,.0f} events/s", "1 event per request", ""))
    lines.append("")
    lines.append("targets:")
    for t in r.get("targets", []):
        lines.append(f"  [{'MET' if t['met'] else 'NOT MET':>7}] {t['id']:<6} {t['target']}: "
                     f"{t['figure']}")
    return "\n".join(lines)


def write(r: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2, sort_keys=False, default=str) + "\n")
