"""Secrets and raw personal data never leak into telemetry, logs, URLs or status pages.

Events carrying a known raw email, phone and name go through every path:
delivered, retried after a 5xx and after a dropped connection, dead-lettered
by Meta, held while the token is refused (190), and rejected at ingest. Then
every exported span (attributes, events, links, resource), every URL the
sandbox saw, every log record at DEBUG, the metrics text, /v1/status and
/v1/events must hold neither the access token nor any of that data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from sidecar.sandbox_faults import Fault
from tests.conftest import TOKEN, Sidecar
from tests.test_telemetry import app_traceparent, track

EMAIL = "Leaky.Person@Example.COM"
PHONE = "+1 (650) 555-0199"
FIRST, LAST = "Zebulon", "Quixotic"
NEEDLES = [
    TOKEN,
    EMAIL,
    EMAIL.lower(),
    PHONE,
    "6505550199",
    FIRST,
    LAST,
]


def personal(**kw: Any) -> dict[str, Any]:
    msg = track(**kw)
    msg["properties"].update(email=f"  {EMAIL} ", phone=PHONE, first_name=FIRST, last_name=LAST)
    msg["context"]["traits"] = {"email": EMAIL, "name": f"{FIRST} {LAST}"}
    return msg


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def state_of(sidecar: Sidecar, mid: str) -> str | None:
    found = await sidecar.event(mid)
    return found["destinations"]["default"]["state"] if found else None


async def test_neither_the_token_nor_raw_personal_data_appears_anywhere_observable(
    sandbox: Any, make_sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar: Sidecar = await make_sidecar(sandbox, phone_field="phone")
    state = sandbox.state

    # Delivered after a 5xx and a dropped connection.
    state.inject(Fault(status=500, times=1))
    state.inject(Fault(drop_connection=True, times=1))
    retried = personal()
    await sidecar.post("/v1/track", retried, headers=app_traceparent())

    async def retried_delivered() -> bool:
        return await state_of(sidecar, retried["messageId"]) == "delivered"

    await until(retried_delivered)

    # Dead-lettered by Meta, its neighbour delivered.
    poison, neighbour = personal(), personal()
    state.inject(Fault(reject_event_ids={poison["messageId"]}, times=0))
    await sidecar.post("/v1/batch", {"batch": [poison, neighbour]}, headers=app_traceparent())

    async def poison_settled() -> bool:
        return (
            await state_of(sidecar, poison["messageId"]),
            await state_of(sidecar, neighbour["messageId"]),
        ) == ("dead", "delivered")

    await until(poison_settled)
    state.clear_faults()

    # Held on a refused token (190), delivered once it is accepted again.
    state.access_token = "rotated-token"
    held = personal()
    await sidecar.post("/v1/track", held)
    assert sidecar.runtime.drainer is not None
    target = sidecar.runtime.drainer.targets["default"]

    async def paused() -> bool:
        return target.paused_since is not None

    await until(paused)
    state.access_token = TOKEN

    async def held_delivered() -> bool:
        return await state_of(sidecar, held["messageId"]) == "delivered"

    await until(held_delivered)

    # Rejected at ingest, the raw data inside the offending field.
    bad = personal(timestamp=EMAIL)
    resp = await sidecar.post("/v1/batch", {"batch": [bad, personal(event=" ")]})
    assert resp.status == 400

    mids = [m["messageId"] for m in (retried, poison, neighbour, held)]
    statuses = {r.status for r in state.requests}
    assert {0, 200, 400, 401, 500} <= statuses, statuses  # every path really ran

    haystacks: dict[str, str] = {}
    spans = sidecar.spans.get_finished_spans()
    assert {s.name for s in spans} >= {
        "retry meta_capi",
        "paused meta_capi",
        "dead meta_capi",
        "delivered meta_capi",
    }
    haystacks["spans"] = "\n".join(s.to_json() for s in spans)
    assert any(event.name == "exception" for s in spans for event in s.events)
    haystacks["sandbox urls"] = "\n".join(
        f"/{r.version}/{r.pixel_id}/events {r.token_source} {r.headers}" for r in state.requests
    )
    assert not any(r.token_in_url for r in state.requests)
    assert {r.token_source for r in state.requests if r.status} == {"body"}
    haystacks["logs"] = (
        "\n".join(f"{rec.name} {rec.getMessage()} {rec.exc_text or ''}" for rec in caplog.records)
        + caplog.text
    )
    async with sidecar.session.get(sidecar.ops_url + "/metrics") as resp:
        haystacks["metrics"] = await resp.text()
    async with sidecar.session.get(sidecar.ops_url + "/v1/status") as resp:
        haystacks["status"] = await resp.text()
    pages = []
    for mid in mids:
        async with sidecar.session.get(f"{sidecar.ops_url}/v1/events/{mid}") as resp:
            assert resp.status == 200
            pages.append(await resp.text())
    haystacks["events"] = "\n".join(pages)
    assert orjson.loads(pages[1])["destinations"]["default"]["last_error"]["code"] == 100

    for where, text in haystacks.items():
        assert text, where
        for needle in NEEDLES:
            assert needle.lower() not in text.lower(), f"{needle!r} leaked into {where}"
    # And the test would notice: the raw data did reach the sidecar.
    assert EMAIL in orjson.dumps(bad).decode()
