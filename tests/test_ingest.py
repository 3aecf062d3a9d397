"""Ingest: every bad input gets its documented status and loses nothing accepted."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.messages import merge_context
from tests.conftest import Sandbox, Sidecar


def msg(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"messageId": str(uuid.uuid4()), "userId": "u1",
                            "event": "Product Viewed", "properties": {"sku": "A1"}}
    base.update(kw)
    return base


async def raw_post(sc: Sidecar, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    async with sc.session.post(sc.url + path, data=io.BytesIO(body),
                               headers={"Content-Type": "application/json", **headers}) as r:
        text = await r.read()
        return r.status, orjson.loads(text) if text else None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"", "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_400_with_a_clear_message(
    sidecar: Sidecar, body: bytes, needle: str
) -> None:
    status, doc = await raw_post(sidecar, "/v1/track", body)
    assert status == 400
    assert needle in doc["error"]


@pytest.mark.parametrize(
    ("batch_doc", "needle"),
    [
        ({"batch": "nope"}, '{"batch": [messages...]}'),
        ({"messages": []}, '{"batch": [messages...]}'),
        ({"batch": []}, "empty"),
        ({"batch": [{"type": "track", "userId": "u", "event": "x"}], "context": "x"},
         "context must be an object"),
    ],
)
async def test_wrongly_shaped_batches_get_400(
    sidecar: Sidecar, batch_doc: Any, needle: str
) -> None:
    status, doc = await raw_post(sidecar, "/v1/batch", orjson.dumps(batch_doc))
    assert status == 400
    assert needle in doc["error"]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "track", "userId": "u", "event": "  "}, "event"),
        ({"type": "bogus", "userId": "u"}, "type"),
        ({"userId": "u", "event": "x"}, "type"),
        ({"type": "track", "event": "x"}, "userId"),
        ({"type": "track", "userId": "u", "event": "x", "properties": [1]}, "properties"),
        ({"type": "track", "userId": "u", "event": "x", "context": "c"}, "context"),
        ({"type": "track", "userId": "u", "event": "x", "messageId": 7}, "messageId"),
        ({"type": "track", "userId": "u", "event": "x", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "x", "timestamp": 12}, "timestamp"),
        ("just a string", "object"),
    ],
)
async def test_each_bad_message_is_listed_and_the_good_ones_are_stored(
    sidecar: Sidecar, message: Any, field: str
) -> None:
    good = msg(type="track")
    status, doc = await raw_post(sidecar, "/v1/batch", orjson.dumps({"batch": [good, message]}))
    assert status == 200
    assert doc["success"] is True
    (rejected,) = doc["rejected"]
    assert rejected["index"] == 1
    assert field in rejected["error"]
    assert await sidecar.event(good["messageId"]) is not None


async def test_a_request_whose_every_message_is_bad_gets_400(sidecar: Sidecar) -> None:
    status, doc = await raw_post(sidecar, "/v1/batch", orjson.dumps(
        {"batch": [{"type": "track"}, {"type": "page"}]}))
    assert status == 400
    assert [r["index"] for r in doc["rejected"]] == [0, 1]


async def test_a_single_message_over_the_size_limit_gets_413(sidecar: Sidecar) -> None:
    big = msg(properties={"blob": "x" * 40_000})
    status, doc = await raw_post(sidecar, "/v1/track", orjson.dumps(big))
    assert status == 413
    assert "exceeds" in doc["error"]
    assert await sidecar.event(big["messageId"]) is None


async def test_an_oversize_message_inside_a_batch_is_rejected_alone(sidecar: Sidecar) -> None:
    big, good = msg(type="track", properties={"blob": "x" * 40_000}), msg(type="track")
    status, doc = await raw_post(sidecar, "/v1/batch", orjson.dumps({"batch": [big, good]}))
    assert status == 200
    assert doc["rejected"][0]["messageId"] == big["messageId"]
    assert "size" in doc["rejected"][0]["error"]


async def test_a_request_over_the_body_limit_gets_413(sandbox: Sandbox, make_sidecar: Any) -> None:
    sc = await make_sidecar(sandbox, max_request_bytes=8192)
    batch = [msg(type="track", properties={"pad": "y" * 1000}) for _ in range(20)]
    status, _ = await raw_post(sc, "/v1/batch", orjson.dumps({"batch": batch}))
    assert status == 413
    for m in batch:
        assert await sc.event(m["messageId"]) is None


async def test_too_many_messages_in_a_batch_get_413(sandbox: Sandbox, make_sidecar: Any) -> None:
    sc = await make_sidecar(sandbox, max_batch_messages=3)
    status, doc = await raw_post(sc, "/v1/batch", orjson.dumps(
        {"batch": [msg(type="track") for _ in range(4)]}))
    assert status == 413
    assert "limit is 3" in doc["error"]


async def test_a_gzip_bomb_is_refused_without_inflating_it(sidecar: Sidecar) -> None:
    # 64 MiB of zeros compress to ~64 KiB; the limit is 4 MiB inflated.
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)
    status, doc = await raw_post(sidecar, "/v1/batch", bomb, **{"Content-Encoding": "gzip"})
    assert status == 413
    assert "decompressed" in doc["error"]


async def test_a_body_that_is_not_gzip_but_says_so_gets_400(sidecar: Sidecar) -> None:
    status, doc = await raw_post(sidecar, "/v1/track", orjson.dumps(msg()),
                                 **{"Content-Encoding": "gzip"})
    assert status == 400
    assert "gzip" in doc["error"]


async def test_an_unsupported_encoding_gets_400(sidecar: Sidecar) -> None:
    status, doc = await raw_post(sidecar, "/v1/track", orjson.dumps(msg()),
                                 **{"Content-Encoding": "br"})
    assert status == 400
    assert "Content-Encoding" in doc["error"]


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


@pytest.mark.parametrize("auth", [None, basic("wrong"), "Bearer secret-key", "Basic !!!"])
async def test_a_wrong_or_missing_write_key_gets_401_and_stores_nothing(
    sandbox: Sandbox, make_sidecar: Any, auth: str | None
) -> None:
    sc = await make_sidecar(sandbox, write_key="secret-key")
    m = msg()
    headers = {"Authorization": auth} if auth else {}
    status, doc = await raw_post(sc, "/v1/track", orjson.dumps(m), **headers)
    assert status == 401
    assert "write key" in doc["error"]
    assert await sc.event(m["messageId"]) is None


async def test_the_right_write_key_is_accepted(sandbox: Sandbox, make_sidecar: Any) -> None:
    sc = await make_sidecar(sandbox, write_key="secret-key")
    status, _ = await raw_post(sc, "/v1/track", orjson.dumps(msg()),
                               Authorization=basic("secret-key"))
    assert status == 200


async def test_a_message_without_message_id_gets_a_generated_one(sidecar: Sidecar) -> None:
    m = msg()
    del m["messageId"]
    status, _ = await raw_post(sidecar, "/v1/track", orjson.dumps(m))
    assert status == 200
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: state.events)
    uuid.UUID(state.events[0]["event_id"])
    assert sidecar.runtime.telemetry.metrics.generated_ids._value.get() == 1


async def test_bad_requests_lose_nothing_already_accepted(sidecar: Sidecar) -> None:
    first = msg()
    assert (await raw_post(sidecar, "/v1/track", orjson.dumps(first)))[0] == 200
    for body in (b"{", b"[]", gzip.compress(b"0" * 10_000_000)):
        await raw_post(sidecar, "/v1/batch", body, **{"Content-Encoding": "gzip"}
                       if body[:2] == b"\x1f\x8b" else {})
    assert sidecar.sandbox is not None
    state = sidecar.sandbox.state
    await sidecar.wait_for(lambda: any(e["event_id"] == first["messageId"] for e in state.events))


async def test_the_outbox_over_its_cap_answers_503_with_retry_after(
    sandbox: Sandbox, make_sidecar: Any
) -> None:
    sandbox.state.inject(_fault_forever())
    sc = await make_sidecar(sandbox, outbox_cap=2)
    for _ in range(2):
        assert (await raw_post(sc, "/v1/track", orjson.dumps(msg())))[0] == 200
    refused = msg()
    async with sc.session.post(sc.url + "/v1/track", json=refused) as r:
        assert r.status == 503
        assert r.headers["Retry-After"].isdigit()
    assert await sc.event(refused["messageId"]) is None
    async with sc.session.get(sc.ops_url + "/readyz") as r:
        assert r.status == 503
        assert "cap" in (await r.json())["reasons"][0]


def _fault_forever() -> Any:
    from sidecar.sandbox import Fault

    return Fault(status=503, times=0)


def test_a_batch_context_merges_under_the_message_context() -> None:
    merged = merge_context({"ip": "1.1.1.1", "page": {"url": "a", "title": "t"}},
                           {"page": {"url": "b"}, "userAgent": "ua"})
    assert merged == {"ip": "1.1.1.1", "page": {"url": "b", "title": "t"}, "userAgent": "ua"}


def test_the_database_file_is_private(tmp_path: Path) -> None:
    import asyncio

    from sidecar.outbox import Outbox

    async def go() -> None:
        ob = Outbox(tmp_path / "o.db")
        await ob.open()
        await ob.close()

    asyncio.run(go())
    assert (tmp_path / "o.db").stat().st_mode & 0o777 == 0o600


async def test_a_large_batch_arriving_in_many_segments_is_read_whole(sidecar: Sidecar) -> None:
    batch = [msg(type="track", properties={"sku": f"S{i}", "pad": "z" * 600})
             for i in range(2000)]
    body = orjson.dumps({"batch": batch})
    assert len(body) > 1_000_000
    status, doc = await raw_post(sidecar, "/v1/batch", body)
    assert status == 200, doc
    assert "rejected" not in doc
    for m in (batch[0], batch[999], batch[-1]):
        assert await sidecar.event(m["messageId"]) is not None


async def test_a_body_sent_in_two_pauses_is_read_whole(sidecar: Sidecar) -> None:
    m = msg()
    body = orjson.dumps(m)
    host, port = sidecar.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST /v1/track HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(body[len(body) // 2 :])
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert await sidecar.event(m["messageId"]) is not None
