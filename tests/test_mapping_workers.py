"""Mapping workers: large batch bodies are mapped in a child process, and
nothing changes for the client or Meta when they are, or when one dies."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.ingest import WORKER_MIN_BYTES
from sidecar.mapping_pool import RESTART_SECONDS, MappingPool
from sidecar.mapworker import config_frame
from sidecar.messages import BadRequest, Limits
from tests.conftest import Sandbox, Sidecar, sidecar_settings, track

LIMITS = Limits(32 * 1024, 4 * 1024 * 1024, 2000)


def big_batch(n: int = 40, *, small: bool = False) -> dict[str, Any]:
    msgs = [track(properties={"email": f"Shopper.{i}@Example.com", "total": 10 + i,
                              "currency": "usd", "order_id": f"o-{i}",
                              "products": [{"sku": f"SKU-{i}", "price": 10, "quantity": 1}]},
                  context={"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 test",
                           "page": {"url": "https://shop.example/x"}})
            for i in range(n)]
    body = {"batch": msgs, "context": {"traits": {"address": {"country": "US"}}}}
    assert small or len(orjson.dumps(body)) >= WORKER_MIN_BYTES
    return body


def pool_of(sidecar: Sidecar) -> MappingPool:
    assert sidecar.runtime.ingest is not None
    pool = sidecar.runtime.ingest.pool
    assert pool is not None
    return pool


async def started(sidecar: Sidecar) -> MappingPool:
    """Offer one body so the pool starts its worker, then wait until it runs."""
    pool = pool_of(sidecar)
    assert (await sidecar.post("/v1/batch", big_batch(30))).status == 200
    await sidecar.wait_for(lambda: any(w.alive for w in pool._workers))
    return pool


async def delivered(sidecar: Sidecar, sandbox: Sandbox, ids: list[str]) -> dict[str, Any]:
    await sidecar.wait_for(lambda: {e["event_id"] for e in sandbox.state.events} >= set(ids))
    return {e["event_id"]: e for e in sandbox.state.events if e["event_id"] in ids}


async def test_a_large_batch_is_mapped_by_a_worker_exactly_as_in_process(
    sandbox: Sandbox, make_sidecar: Any, tmp_path: Path
) -> None:
    with_worker = await make_sidecar(sandbox, mapping_workers=1, db_path=tmp_path / "w.db")
    pool = await started(with_worker)
    offloaded = pool.offloaded
    body = big_batch()
    ids = [m["messageId"] for m in body["batch"]]
    assert (await with_worker.post("/v1/batch", body)).status == 200
    assert pool.offloaded == offloaded + 1
    from_worker = await delivered(with_worker, sandbox, ids)

    sandbox.state.events.clear()
    in_process = await make_sidecar(sandbox, mapping_workers=0, db_path=tmp_path / "p.db")
    assert in_process.runtime.ingest is not None and in_process.runtime.ingest.pool is None
    assert (await in_process.post("/v1/batch", body)).status == 200
    assert from_worker == await delivered(in_process, sandbox, ids)
    assert from_worker[ids[3]]["user_data"]["country"]  # the batch context was merged
    assert "Shopper" not in orjson.dumps(from_worker).decode()
    status = await with_worker.event(ids[0])
    assert status is not None and status["traceparent"]  # the ingest span's context


async def test_refusals_generated_ids_and_metrics_are_the_same_through_a_worker(
    sandbox: Sandbox, make_sidecar: Any
) -> None:
    sidecar = await make_sidecar(sandbox, mapping_workers=1)
    pool = await started(sidecar)
    body = big_batch()
    body["batch"][1].pop("userId")
    body["batch"][2].pop("messageId")
    body["batch"].append("not a message")
    offloaded = pool.offloaded
    resp = await sidecar.post("/v1/batch", body)
    assert pool.offloaded == offloaded + 1
    assert resp.status == 200
    answer = await resp.json()
    assert [(r["index"], r["messageId"]) for r in answer["rejected"]] == [
        (1, body["batch"][1]["messageId"]), (40, None)]
    assert answer["rejected"][0]["error"].startswith("userId:")
    metrics = await (await sidecar.session.get(sidecar.ops_url + "/metrics")).text()
    assert 'capi_ingest_batch_bodies_total{mapped_by="worker"} 1.0' in metrics
    assert 'capi_messages_received_total{type="invalid"} 1.0' in metrics
    assert 'capi_messages_rejected_total{reason="userId"} 1.0' in metrics
    assert "capi_message_ids_generated_total 1.0" in metrics

    # A body refused whole gets the answer it gets in-process.
    pad = {"batch": "no", "padding": "x" * WORKER_MIN_BYTES}
    resp = await sidecar.post("/v1/batch", pad)
    assert resp.status == 400
    assert (await resp.json())["error"] == 'a batch body must be {"batch": [messages...]}'
    assert pool.fallbacks == 0


async def test_a_killed_worker_loses_nothing_and_is_started_again(
    sandbox: Sandbox, make_sidecar: Any
) -> None:
    sidecar = await make_sidecar(sandbox, mapping_workers=1)
    pool = await started(sidecar)
    (worker,) = pool._workers
    os.kill(worker.proc.pid, signal.SIGKILL)
    await sidecar.wait_for(lambda: not worker.alive)

    body = big_batch()
    ids = [m["messageId"] for m in body["batch"]]
    offloaded = pool.offloaded
    assert (await sidecar.post("/v1/batch", body)).status == 200  # mapped in-process
    assert pool.offloaded == offloaded
    await delivered(sidecar, sandbox, ids)

    # A later body starts a new worker, which takes the bodies after it.
    await asyncio.sleep(RESTART_SECONDS)
    assert (await sidecar.post("/v1/batch", big_batch())).status == 200
    await sidecar.wait_for(lambda: any(w.alive for w in pool._workers))
    assert (await sidecar.post("/v1/batch", big_batch())).status == 200
    assert pool.offloaded == offloaded + 1


async def test_single_events_and_small_batches_never_start_a_worker(
    sandbox: Sandbox, make_sidecar: Any
) -> None:
    sidecar = await make_sidecar(sandbox, mapping_workers=2)
    assert (await sidecar.post("/v1/track", track())).status == 200
    assert (await sidecar.post("/v1/batch", {"batch": [track(), track()]})).status == 200
    assert pool_of(sidecar)._workers == []


async def test_the_pool_answers_like_ingest_and_leaves_no_process_behind(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    settings = sidecar_settings(tmp_path, sandbox)
    dests = list(settings.resolved_destinations(None))
    pool = MappingPool(1, config_frame(dests, None, LIMITS))
    body = orjson.dumps(big_batch(5, small=True))  # the pool itself takes any size
    assert await pool.prepare("/v1/batch", body, now=time.time(), traceparent=None) is None
    deadline = time.monotonic() + 20
    while not pool._workers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    prepared = await pool.prepare("/v1/batch", body, now=time.time(), traceparent="00-x")
    assert prepared is not None
    assert [ev.traceparent for ev in prepared.events] == ["00-x"] * 5
    assert prepared.received == {"track": 5}
    with pytest.raises(BadRequest) as refused:
        await pool.prepare("/v1/batch", b"{nope", now=time.time(), traceparent=None)
    assert refused.value.status == 400
    proc = pool._workers[0].proc
    await pool.close()
    assert proc.returncode is not None
    assert await pool.prepare("/v1/batch", body, now=time.time(), traceparent=None) is None


async def test_a_worker_fills_location_from_the_configured_geoip_database(
    sandbox: Sandbox, make_sidecar: Any, tmp_path: Path
) -> None:
    from tests.test_geo import city_record, write_db

    db = write_db(tmp_path / "city.mmdb", {"203.0.113.0/24": city_record("Seattle", "WA", "US")},
                  "GeoLite2-City")
    sidecar = await make_sidecar(sandbox, mapping_workers=1, geoip_db=db)
    pool = await started(sidecar)
    body = big_batch()
    for msg in body["batch"]:
        msg["context"].pop("page")
    body.pop("context")  # no country in the event: only the IP can place it
    offloaded = pool.offloaded
    assert (await sidecar.post("/v1/batch", body)).status == 200
    assert pool.offloaded == offloaded + 1
    ids = [m["messageId"] for m in body["batch"]]
    events = await delivered(sidecar, sandbox, ids)
    user_data = events[ids[0]]["user_data"]
    assert user_data["ct"] == hashlib.sha256(b"seattle").hexdigest()
    assert user_data["country"] == hashlib.sha256(b"us").hexdigest()


async def test_a_stuck_worker_is_killed_and_its_body_mapped_in_process(
    sandbox: Sandbox, make_sidecar: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sidecar.mapping_pool

    monkeypatch.setattr(sidecar.mapping_pool, "REPLY_TIMEOUT_SECONDS", 0.5)
    sidecar = await make_sidecar(sandbox, mapping_workers=1)
    pool = await started(sidecar)
    (worker,) = pool._workers
    os.kill(worker.proc.pid, signal.SIGSTOP)  # alive, but never answers
    body = big_batch()
    ids = [m["messageId"] for m in body["batch"]]
    assert (await sidecar.post("/v1/batch", body)).status == 200
    assert pool.fallbacks == 1
    await delivered(sidecar, sandbox, ids)
    assert await worker.proc.wait() == -signal.SIGKILL
    metrics = await (await sidecar.session.get(sidecar.ops_url + "/metrics")).text()
    # The first body (the worker was starting) and the stuck one.
    assert 'capi_ingest_batch_bodies_total{mapped_by="server"} 2.0' in metrics
    assert 'capi_ingest_batch_bodies_total{mapped_by="worker"}' not in metrics


def test_a_worker_that_fails_on_a_body_says_where_but_never_quotes_the_event(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import io
    import marshal

    from sidecar import mapworker

    class Exploding:
        def __init__(self, *_args: Any) -> None:
            pass

        def map(self, message: Any, **_kw: Any) -> Any:
            raise ValueError(f"cannot map {message['properties']['email']}")

    def frame(data: bytes) -> bytes:
        return mapworker.HEADER.pack(len(data)) + data

    monkeypatch.setattr(mapworker, "Mapper", Exploding)
    dests = list(sidecar_settings(tmp_path, sandbox).resolved_destinations(None))
    body = orjson.dumps(big_batch(1, small=True))
    inp = io.BytesIO(frame(config_frame(dests, None, LIMITS))
                     + frame(marshal.dumps(("/v1/batch", body, time.time(), None))))
    out = io.BytesIO()
    assert mapworker.serve(inp, out) == 0  # end of input ends the worker
    out.seek(0)
    assert marshal.loads(mapworker.read_frame(out) or b"") == (2, "ValueError")
    assert "ValueError" in caplog.text and "raise ValueError" in caplog.text
    assert "Shopper" not in caplog.text
