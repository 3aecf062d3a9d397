"""The drainer batches steady traffic instead of sending it a handful at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Sandbox, Sidecar, track


async def test_after_a_short_batch_the_drainer_lingers_before_claiming_again(
    sandbox: Sandbox, make_sidecar: Any
) -> None:
    # Between any two claims two more events arrive, so the backlog is never
    # empty when the drainer looks: only lingering after a short batch keeps
    # it from claiming (and sending) back to back, a few rows each time, and
    # queueing those claims and marks on the writer ahead of ingest commits.
    sidecar: Sidecar = await make_sidecar(sandbox, linger_ms=100, concurrency=4)
    outbox = sidecar.runtime.outbox
    assert outbox is not None
    claim = outbox.claim
    claims = 0
    sent: list[str] = []

    async def arrivals_then_claim(*args: Any, **kw: Any) -> Any:
        nonlocal claims
        claims += 1
        for _ in range(2):
            msg = track()
            sent.append(msg["messageId"])
            assert (await sidecar.post("/v1/track", msg)).status == 200
        return await claim(*args, **kw)

    outbox.claim = arrivals_then_claim  # type: ignore[method-assign]
    assert (await sidecar.post("/v1/track", track())).status == 200
    await asyncio.sleep(0.6)
    outbox.claim = claim  # type: ignore[method-assign]
    # 0.6 s at one claim per 100 ms linger is about 6; without it, hundreds.
    assert 2 <= claims <= 15, claims
    await sidecar.wait_for(lambda: {e["event_id"] for e in sandbox.state.events} >= set(sent))
