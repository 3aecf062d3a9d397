"""Backlog prefill: write N mapped events straight into an outbox database.

The rows are what ingest would have written: each message is mapped by
``sidecar.mapping.Mapper`` for the sidecar's one destination (``default``),
and stored through ``sidecar.outbox.Outbox.add`` in big groups. Mapping runs
in worker processes (both cores); the main process only inserts. Commits use
``synchronous=NORMAL``: this is set-up, not the thing measured.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from bench.procs import PIXEL, TOKEN
from bench.workload import Workload
from sidecar.config import DestinationSettings
from sidecar.mapping import Mapped, Mapper
from sidecar.outbox import NewDelivery, NewEvent, Outbox

DESTINATION = "default"  # the name the sidecar gives its one flat-configured destination
GROUP = 5_000
_MAPPER: Mapper | None = None
_WORKLOAD: Workload | None = None

Row = tuple[str, str, int, bytes, int]  # message_id, event_name, event_time, payload, coverage


def destination(graph_url: str) -> DestinationSettings:
    return DestinationSettings(name=DESTINATION, pixel_id=PIXEL, access_token=SecretStr(TOKEN),
                               graph_url=graph_url)


def _init(graph_url: str, timestamp: str) -> None:
    global _MAPPER, _WORKLOAD
    _MAPPER = Mapper(destination(graph_url))
    _WORKLOAD = Workload(timestamp)


def _map_range(tag: str, start: int, stop: int, now: float) -> list[Row]:
    assert _MAPPER is not None and _WORKLOAD is not None
    rows: list[Row] = []
    for i in range(start, stop):
        message = _WORKLOAD.message_for(f"{tag}-{i}")
        outcome = _MAPPER.map(message, received_at=now, now=now)
        assert isinstance(outcome, Mapped), outcome
        rows.append((message["messageId"], outcome.event_name, int(outcome.payload["event_time"]),
                     orjson.dumps(outcome.payload), _coverage(outcome.payload)))
    return rows


def _coverage(payload: dict[str, Any]) -> int:
    # What ingest stores beside the payload, when this tree has the column.
    try:
        from sidecar.telemetry import coverage_mask  # type: ignore[attr-defined]
    except ImportError:
        return 0
    return int(coverage_mask(payload.get("user_data")))


def _delivery(payload: bytes, coverage: int) -> NewDelivery:
    if "coverage" in getattr(NewDelivery, "__dataclass_fields__", {}):
        return NewDelivery(DESTINATION, "pending", payload, coverage=coverage)  # type: ignore[call-arg]
    return NewDelivery(DESTINATION, "pending", payload)


def _new_events(rows: list[Row], now: float) -> list[NewEvent]:
    return [
        NewEvent(message_id=mid, type="track", event_name=name, received_at=now,
                 event_time=event_time, traceparent=None,
                 deliveries=(_delivery(payload, coverage),))
        for mid, name, event_time, payload, coverage in rows
    ]


async def _fill(db_path: Path, n: int, tag: str, graph_url: str, timestamp: str,
                workers: int) -> dict[str, Any]:
    outbox = Outbox(db_path, cap=10 * n + 1, synchronous="NORMAL")
    await outbox.open()
    now = time.time()
    started = time.perf_counter()
    chunks = [(s, min(n, s + GROUP)) for s in range(0, n, GROUP)]
    try:
        if workers <= 1:
            _init(graph_url, timestamp)
            for start, stop in chunks:
                await outbox.add(_new_events(_map_range(tag, start, stop, now), now))
        else:
            await _fill_parallel(outbox, chunks, tag, graph_url, timestamp, workers, now)
    finally:
        await outbox.close()
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds if seconds else 0.0,
            "db_mib": db_path.stat().st_size / 2**20}


async def _fill_parallel(outbox: Outbox, chunks: list[tuple[int, int]], tag: str,
                         graph_url: str, timestamp: str, workers: int, now: float) -> None:
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                             initargs=(graph_url, timestamp)) as pool:
        window: deque[Future[list[Row]]] = deque()
        todo = iter(chunks)
        # A bounded window of mapped chunks in flight keeps memory flat.
        for _ in range(len(chunks) + workers * 2):
            while len(window) < workers * 2:
                nxt = next(todo, None)
                if nxt is None:
                    break
                window.append(pool.submit(_map_range, tag, nxt[0], nxt[1], now))
            if not window:
                break
            rows = await asyncio.wrap_future(window.popleft(), loop=loop)
            await outbox.add(_new_events(rows, now))


def prefill(db_path: Path, n: int, *, tag: str, graph_url: str, timestamp: str,
            workers: int = 2) -> dict[str, Any]:
    """Fill ``db_path`` with ``n`` pending deliveries; how long it took."""
    return asyncio.run(_fill(db_path, n, tag, graph_url, timestamp, workers))
