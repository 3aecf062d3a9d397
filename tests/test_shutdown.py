"""SIGTERM: readiness false, ingest closed, one bounded drain, exit 0, nothing lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from sidecar.sandbox import Fault, SandboxState
from tests.conftest import PIXEL, TOKEN
from tests.invariants import (
    SidecarProcess,
    assert_no_loss,
    batch,
    count_unsettled,
    delivery_rows,
    eventually,
    hammer,
    post_batch,
    wait_until_settled,
)


def make_process(tmp_path: Path, url: str, budget: float) -> SidecarProcess:
    return SidecarProcess(
        db_path=tmp_path / "outbox.db", graph_url=url, token=TOKEN, pixel_id=PIXEL,
        log_path=tmp_path / "sidecar.log",
        extra_env={"CAPI_DRAIN_BUDGET_SECONDS": str(budget),
                   "CAPI_REQUEST_TIMEOUT_SECONDS": "20"},
    )


async def _readiness_after_sigterm(session: aiohttp.ClientSession, proc: SidecarProcess
                                   ) -> list[int]:
    seen: list[int] = []
    while proc.proc is not None and proc.proc.poll() is None:
        try:
            async with session.get(proc.ops_url + "/readyz") as r:
                seen.append(r.status)
        except aiohttp.ClientError:
            break
        await asyncio.sleep(0.02)
    return seen


async def test_sigterm_under_load_exits_zero_within_the_drain_budget_and_keeps_the_rest(
    graph: tuple[str, SandboxState], session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    url, state = graph
    budget = 1.0
    # Meta hangs on every request: nothing can be delivered during the shutdown.
    state.inject(Fault(delay_seconds=60, drop_connection=True, times=0))
    proc = make_process(tmp_path, url, budget)
    try:
        await proc.start_ready(session)
        acked: set[str] = set()
        refused: list[int] = []
        clients = [asyncio.create_task(hammer(session, proc.url, acked, refused, size=10))
                   for _ in range(6)]
        await eventually(lambda: len(acked) >= 300 and state.requests_total + len(state.faults),
                         what="load")
        await eventually(lambda: any(r.leased for r in delivery_rows(proc.db_path).values()),
                         what="requests in flight")
        started = time.monotonic()
        proc.terminate()
        readiness = asyncio.create_task(_readiness_after_sigterm(session, proc))
        code = await proc.wait_exit(timeout=budget + 10)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*clients), 10)
        seen = await readiness
        assert code == 0, proc.log()
        assert elapsed < budget + 3.0, elapsed
        assert 503 in seen and 200 not in seen[seen.index(503):], seen
        assert "released" in proc.log()
        rows = delivery_rows(proc.db_path)
        assert not any(r.leased for r in rows.values()), "leases left behind"
        assert acked <= {mid for mid, _ in rows}
        assert count_unsettled(proc.db_path) == len(rows)  # Meta got nothing

        state.clear_faults()
        await proc.start_ready(session)
        await wait_until_settled(proc.db_path, timeout=20)
        settled = assert_no_loss(proc.db_path, acked, {"default": state})
        assert acked <= settled.delivered["default"]
    finally:
        proc.stop()


async def test_sigterm_with_meta_up_drains_the_backlog_before_exiting(
    graph: tuple[str, SandboxState], session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    url, state = graph
    state.inject(Fault(status=503, times=0))  # build a backlog first
    proc = make_process(tmp_path, url, budget=10.0)
    proc.extra_env["CAPI_BATCH_SIZE"] = "100"
    try:
        await proc.start_ready(session)
        ids: list[str] = []
        for _ in range(5):
            messages = batch(100)
            assert (await post_batch(session, proc.url, messages)).status == 200
            ids += [m["messageId"] for m in messages]
        await eventually(lambda: state.requests, what="a failed attempt")
        state.clear_faults()
        state.inject(Fault(delay_seconds=0.2, times=0))  # slow, but answering
        proc.terminate()  # the backlog is held by the backoff or in flight right now
        assert await proc.wait_exit(timeout=15) == 0, proc.log()
        settled = assert_no_loss(proc.db_path, ids, {"default": state})
        assert settled.delivered["default"] == set(ids)
    finally:
        proc.stop()
