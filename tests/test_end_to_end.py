"""End to end: real SDK clients → real sidecar → real SQLite → real sandbox."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from typing import Any

import orjson
import pytest

from tests.conftest import PIXEL, TOKEN, Sidecar, track


async def test_a_tracked_purchase_is_delivered_to_meta_with_its_message_id(
    sidecar: Sidecar,
) -> None:
    msg = track()
    resp = await sidecar.post("/v1/track", msg)
    assert resp.status == 200
    assert await resp.json() == {"success": True}
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: state.events)
    (event,) = state.events
    assert event["event_id"] == msg["messageId"]
    assert event["event_name"] == "Purchase"
    assert event["user_data"]["client_ip_address"] == "203.0.113.9"
    assert "Jane" not in orjson.dumps(event).decode()
    req = state.requests[-1]
    assert not req.token_in_url
    status = await sidecar.event(msg["messageId"])
    await sidecar.wait_for(lambda: True)
    assert status is not None


async def test_the_segment_python_client_works_unmodified(sidecar: Sidecar) -> None:
    from segment.analytics.client import Client

    client = Client(write_key="any", host=sidecar.url, sync_mode=True, gzip=True)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for mid in ids:
        await asyncio.to_thread(
            client.track, user_id="u1", event="Product Added", message_id=mid,
            properties={"sku": "SKU-1", "price": 9.99},
            context={"ip": "198.51.100.7", "userAgent": "segment-test"},
        )
    await asyncio.to_thread(client.page, user_id="u1", name="Home",
                            properties={"url": "https://shop.example/"})
    await asyncio.to_thread(client.identify, user_id="u1", traits={"email": "a@b.co"})
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: len(state.events) == 6)
    by_id = {e["event_id"]: e for e in state.events}
    assert set(ids) <= set(by_id)
    assert {e["event_name"] for e in state.events} == {"AddToCart", "PageView"}
    assert by_id[ids[0]]["custom_data"]["content_ids"] == ["SKU-1"]


async def test_the_rudderstack_python_client_works_unmodified(sidecar: Sidecar) -> None:
    import rudderstack.analytics as rudder_analytics
    from rudderstack.analytics.client import Client

    assert rudder_analytics is not None
    client = Client(write_key="any", host=sidecar.url, sync_mode=True)
    mid = str(uuid.uuid4())
    await asyncio.to_thread(client.track, user_id="u2", event="Checkout Started",
                            message_id=mid, properties={"total": "19.00"})
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: any(e["event_id"] == mid for e in state.events))
    (event,) = [e for e in state.events if e["event_id"] == mid]
    assert event["event_name"] == "InitiateCheckout"
    assert event["custom_data"]["value"] == "19.00"


async def test_a_batch_merges_its_top_level_context_under_each_message(sidecar: Sidecar) -> None:
    a, b = track(context={"userAgent": "own-agent"}), track()
    del b["context"]
    resp = await sidecar.post("/v1/batch", {"batch": [a, b],
                                            "context": {"ip": "192.0.2.1", "userAgent": "batch"}})
    assert resp.status == 200
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: len(state.events) == 2)
    got = {e["event_id"]: e["user_data"] for e in state.events}
    assert got[a["messageId"]]["client_user_agent"] == "own-agent"
    assert got[a["messageId"]]["client_ip_address"] == "192.0.2.1"
    assert got[b["messageId"]]["client_user_agent"] == "batch"


async def test_a_repeated_message_id_is_acknowledged_and_delivered_once(sidecar: Sidecar) -> None:
    msg = track()
    for _ in range(3):
        assert (await sidecar.post("/v1/track", msg)).status == 200
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: state.events)
    await asyncio.sleep(0.2)
    assert [e["event_id"] for e in state.events] == [msg["messageId"]]


async def test_a_gzipped_batch_is_accepted(sidecar: Sidecar) -> None:
    msg = track()
    body = gzip.compress(orjson.dumps({"batch": [msg]}))
    resp = await sidecar.session.post(sidecar.url + "/v1/batch", data=body, headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()


async def test_delivery_uses_the_configured_pixel_and_never_puts_the_token_in_the_url(
    sidecar: Sidecar,
) -> None:
    await sidecar.post("/v1/page", {"anonymousId": "a1", "messageId": "p-1",
                                    "properties": {"url": "https://shop.example/p"}})
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: state.events)
    req = state.requests[-1]
    assert req.pixel_id == PIXEL
    assert req.token_in_url is False
    assert TOKEN not in repr(req)
    assert req.partner_agent.startswith("capi-sidecar/")


async def test_status_and_event_endpoints_report_the_delivery(sidecar: Sidecar) -> None:
    msg = track()
    await sidecar.post("/v1/track", msg)
    mid = msg["messageId"]

    async def state_of() -> Any:
        async with sidecar.session.get(f"{sidecar.ops_url}/v1/events/{mid}") as r:
            return (await r.json())["destinations"]["default"]["state"]

    for _ in range(200):
        if await state_of() == "delivered":
            break
        await asyncio.sleep(0.02)
    assert await state_of() == "delivered"
    async with sidecar.session.get(f"{sidecar.ops_url}/v1/status") as r:
        doc = await r.json()
    assert doc["destinations"]["default"]["delivered"] >= 1
    async with sidecar.session.get(f"{sidecar.ops_url}/v1/events/nope") as r:
        assert r.status == 404
    for path in ("/healthz", "/readyz"):
        async with sidecar.session.get(sidecar.ops_url + path) as r:
            assert r.status == 200


@pytest.mark.parametrize("kind", ["identify", "group", "alias"])
async def test_identify_group_and_alias_are_acknowledged_and_skipped(
    sidecar: Sidecar, kind: str
) -> None:
    mid = str(uuid.uuid4())
    resp = await sidecar.post(f"/v1/{kind}", {"userId": "u", "messageId": mid,
                                               "previousId": "p", "groupId": "g"})
    assert resp.status == 200
    status = await sidecar.event(mid)
    assert status is not None
    assert status["destinations"]["default"]["state"] == "skipped"
    assert status["destinations"]["default"]["reason"]
