"""Metrics and status: scraped over HTTP from the ops listener, counts agree with what was sent.

One scenario exercises every counter: good events (with different
user_data fields), a duplicate, invalid messages, an identify (skipped), a
failed Graph request that is retried. ``/metrics``, ``/v1/status`` and
``capi-sidecar status`` must all tell the same story.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli import main as cli_main
from sidecar.config import load_settings
from sidecar.mapping import Mapped, Mapper
from sidecar.sandbox_faults import Fault
from sidecar.telemetry import COVERAGE_FIELDS, coverage_mask
from tests.conftest import Sidecar
from tests.test_telemetry import track

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(sidecar: Sidecar) -> Samples:
    async with sidecar.session.get(sidecar.ops_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def varied_events() -> list[dict[str, Any]]:
    """Five events whose user_data differ, so that each coverage share is distinct."""
    plain = track()
    anonymous = track(userId=None, anonymousId="anon-1")
    anonymous["properties"] = {"total": 1, "fbp": "fb.1.1558571054389.1098115397"}
    del anonymous["userId"]
    named = track()
    named["properties"].update(first_name="Jane", last_name="Doe", phone="+1 650 555 1212")
    clicked = track()
    clicked["context"]["clientIds"] = {"fbc": "fb.1.1554763741205.AbCdEfGhIjKl"}
    bare = track(context={})
    bare["properties"] = {"total": 3}
    return [plain, anonymous, named, clicked, bare]


async def test_metrics_status_and_the_cli_agree_with_what_was_sent(
    sandbox: Any, make_sidecar: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar: Sidecar = await make_sidecar(sandbox, phone_field="phone")
    sandbox.state.inject(Fault(status=500, times=1))
    events = varied_events()
    for ev in events:
        assert (await sidecar.post("/v1/track", ev)).status == 200
    assert (await sidecar.post("/v1/track", events[0])).status == 200  # duplicate
    invalid = [
        {"type": "track", "messageId": str(uuid.uuid4()), "userId": "u"},  # no event name
        {"type": "track", "messageId": str(uuid.uuid4()), "userId": "u", "event": " "},
        {"type": "bogus", "userId": "u"},
    ]
    batch = {"batch": [*invalid, {"type": "identify", "userId": "u1"}]}
    assert (await sidecar.post("/v1/batch", batch)).status == 200
    assert (await sidecar.post("/v1/batch", {"batch": invalid})).status == 400

    async def all_delivered() -> bool:
        states = [await sidecar.event(ev["messageId"]) for ev in events]
        return all(s and s["destinations"]["default"]["state"] == "delivered" for s in states)

    await until(all_delivered)
    samples = await scrape(sidecar)

    # Ingest counters.
    assert value(samples, "capi_messages_received_total", type="track") == 6 + 2 + 2
    assert value(samples, "capi_messages_received_total", type="identify") == 1
    assert value(samples, "capi_messages_received_total", type="invalid") == 2
    assert value(samples, "capi_messages_accepted_total", type="track") == 5
    assert value(samples, "capi_messages_accepted_total", type="identify") == 1
    assert value(samples, "capi_messages_duplicate_total") == 1
    assert value(samples, "capi_message_ids_generated_total") == 1
    assert value(samples, "capi_messages_rejected_total", reason="event") == 4
    assert value(samples, "capi_messages_rejected_total", reason="type") == 2
    assert value(samples, "capi_ingest_refused_total", status="400") == 1
    assert value(samples, "capi_ingest_request_seconds_count", endpoint="/v1/track") == 6
    assert value(samples, "capi_ingest_request_seconds_count", endpoint="/v1/batch") == 2

    # Delivery counters against what the sandbox saw.
    requests = sandbox.state.requests
    failed = [r for r in requests if r.status == 500]
    assert len(failed) == 1
    dest = {"destination": "default"}
    assert value(samples, "capi_deliveries_total", **dest, outcome="delivered", code="") == 5
    assert value(samples, "capi_deliveries_total", **dest, outcome="retry", code="1") == len(
        failed[0].events
    )
    assert value(samples, "capi_deliveries_total", **dest, outcome="skipped", code="") == 1
    assert total(samples, "capi_deliveries_total", outcome="dead") == 0
    assert value(samples, "capi_graph_requests_total", **dest, verdict="success", code="") == (
        len(requests) - 1
    )
    assert value(samples, "capi_graph_requests_total", **dest, verdict="transient", code="1") == 1
    assert value(samples, "capi_batch_events_count", **dest) == len(requests)
    assert value(samples, "capi_batch_events_sum", **dest) == sum(len(r.events) for r in requests)
    assert value(samples, "capi_graph_request_seconds_count", **dest) == len(requests)
    assert value(samples, "capi_destination_paused", **dest) == 0
    assert value(samples, "capi_outbox_pending", **dest) == 0
    assert value(samples, "capi_outbox_oldest_pending_age_seconds", **dest) == 0

    # Coverage against the user_data Meta actually received.
    received = [e["user_data"] for e in sandbox.state.events]
    assert len(received) == 5
    assert value(samples, "capi_user_data_events_total", **dest) == 5
    shares: dict[str, float] = {}
    for field in COVERAGE_FIELDS:
        carrying = sum(1 for ud in received if field in ud)
        shares[field] = carrying / 5
        assert value(samples, "capi_user_data_field_events_total", **dest, field=field) == (
            carrying
        ), field
        assert value(samples, "capi_user_data_coverage_ratio", **dest, field=field) == (
            pytest.approx(shares[field])
        ), field
    assert len(set(shares.values())) >= 4  # the events really differ

    # /v1/status tells the same, and so does `capi-sidecar status`.
    async with sidecar.session.get(sidecar.ops_url + "/v1/status") as resp:
        status = await resp.json()
    figures = {
        "messages": {
            "received": 13,
            "accepted": 6,
            "rejected": 6,
            "duplicate": 1,
            "ids_generated": 1,
        },
        "outcomes": {
            "delivered": 5,
            "retry": len(failed[0].events),
            "paused": 0,
            "dead": 0,
            "skipped": 1,
        },
        "coverage": {
            "delivered_events": 5,
            "shares": {f: round(s, 4) for f, s in shares.items()},
        },
        "paused": False,
    }
    assert pick(status) == figures

    ops = sidecar.ops_url.removeprefix("http://")
    os.environ["CAPI_OPS_LISTEN"] = ops
    try:
        capsys.readouterr()
        code = await asyncio.to_thread(cli_main, ["status"])
    finally:
        del os.environ["CAPI_OPS_LISTEN"]
    assert code == 0
    assert pick(json.loads(capsys.readouterr().out)) == figures


def pick(status: dict[str, Any]) -> dict[str, Any]:
    default = status["destinations"]["default"]
    return {
        "messages": status["messages"],
        "outcomes": default["outcomes"],
        "coverage": default["coverage"],
        "paused": default["paused"],
    }


async def test_a_paused_destination_shows_in_metrics_and_status(
    sidecar: Sidecar,
) -> None:
    assert sidecar.sandbox is not None
    sidecar.sandbox.state.access_token = "revoked"
    await sidecar.post("/v1/track", track())
    dest = {"destination": "default"}

    async def paused() -> bool:
        return value(await scrape(sidecar), "capi_destination_paused", **dest) == 1

    await until(paused)
    samples = await scrape(sidecar)
    assert value(samples, "capi_deliveries_total", **dest, outcome="paused", code="190") >= 1
    assert value(samples, "capi_graph_requests_total", **dest, verdict="credentials", code="190")
    assert value(samples, "capi_outbox_pending", **dest) == 1
    async with sidecar.session.get(sidecar.ops_url + "/v1/status") as resp:
        status = await resp.json()
    assert status["destinations"]["default"]["paused"] is True
    assert status["destinations"]["default"]["outcomes"]["paused"] >= 1


def test_the_coverage_mask_names_exactly_the_user_data_fields_of_the_payload() -> None:
    settings = load_settings(pixel_id="1", access_token="t", phone_field="phone")
    mapper = Mapper(settings.resolved_destinations(None)[0], None)
    now = time.time()
    for ev in varied_events():
        outcome = mapper.map(ev, received_at=now, now=now)
        assert isinstance(outcome, Mapped)
        stored = orjson.loads(orjson.dumps(outcome.payload))["user_data"]
        mask = coverage_mask(outcome.payload["user_data"])
        carried = [f for i, f in enumerate(COVERAGE_FIELDS) if mask & (1 << i)]
        assert carried == [f for f in COVERAGE_FIELDS if f in stored]
    assert coverage_mask(None) == coverage_mask({}) == 0
