"""The benchmark harness, run end to end at a trivial size so it cannot rot.

No timing is asserted (this machine is shared and noisy): only that every
phase runs against the real processes and reports well-formed numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.phases import Config
from bench.run import run
from bench.workload import Workload

pytest.importorskip("facebook_business")


def tiny_config() -> Config:
    return Config(
        duration=0.5, levels=(1, 16), batch_connections=2, e2e_duration=0.5, sdk_duration=0.5,
        sdk_threads=2, backlog=300, small_backlog=100, small_runs=1, warmup=0.2,
        loader="python", settle_timeout=30.0, quiet_seconds=0.3, idle_settle=0.2,
    )


def finite_numbers(doc: Any) -> list[float]:
    if isinstance(doc, bool):
        return []
    if isinstance(doc, int | float):
        return [float(doc)]
    if isinstance(doc, dict):
        return [n for v in doc.values() for n in finite_numbers(v)]
    if isinstance(doc, list):
        return [n for v in doc for n in finite_numbers(v)]
    return []


def test_the_workload_makes_distinct_valid_bodies_of_about_a_kilobyte() -> None:
    workload = Workload(batch_size=3)
    one, two = json.loads(workload.single("a-1")), json.loads(workload.single("a-2"))
    assert one["messageId"] != two["messageId"]
    assert 800 <= workload.message_bytes <= 1400
    batch = json.loads(workload.batch("b"))["batch"]
    assert len({m["messageId"] for m in batch}) == 3
    assert "@PARTS@" not in workload.lua_script(batch=True)


@pytest.mark.timeout(180)
def test_a_tiny_bench_run_reports_every_figure_with_its_reference(tmp_path: Path) -> None:
    out = tmp_path / "results" / "latest.json"

    results = run(tiny_config(), tmp_path, out)

    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    numbers = finite_numbers(results)
    assert numbers and all(math.isfinite(n) and n >= 0 for n in numbers)
    for level in ("1", "16"):
        m = results["track"][level]
        assert m["ceiling"]["ok"] > 0 and m["sidecar"]["ok"] > 0
        assert m["ratio"] > 0 and m["sidecar"]["p99_ms"] >= m["sidecar"]["p50_ms"] > 0
    assert results["batch"]["sidecar"]["events_per_s"] > 0
    assert {"0ms", "100ms"} <= results["e2e"].keys()
    assert all(e["delivered"] >= e["accepted"] > 0 for e in results["e2e"].values())
    assert results["sdk"]["ok"] > 0 and results["sdk"]["errors"] == 0
    assert results["drain"]["big"]["delivered"] == 300
    assert results["drain"]["ratio"] > 0
    assert {"idle_mib", "peak_mib", "backlog_big_hwm_mib"} <= results["memory"].keys()
    assert {t["id"] for t in results["targets"]} == {
        "b", "c", "d0", "d100", "e", "f-idle", "f-peak", "f-flat", "g"}
    assert "targets:" in report.table(results)
