"""The sandbox answers like Meta's Graph API, records what it got, and misbehaves on request."""

from __future__ import annotations

import asyncio
import copy
import gzip
import hashlib
import hmac
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.sandbox import (
    SANDBOX_STATE,
    Fault,
    SandboxState,
    create_sandbox_app,
    start_sandbox,
)

TOKEN = "sandbox-test-token-0f9e8d"
PIXEL = "998877665544"
SECRET = "sandbox-test-app-secret"
NOW = 1_790_000_000
DAY = 24 * 3600
EMAIL_HASH = hashlib.sha256(b"jane@example.com").hexdigest()
USER_HASH = hashlib.sha256(b"user-1").hexdigest()
DELETE = object()


def an_event(event_id: str = "evt-1", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": [EMAIL_HASH],
            "external_id": [USER_HASH],
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0 (test)",
            "fbp": "fb.1.1596403881668.1116446470",
        },
        "custom_data": {"currency": "USD", "value": "42.50", "content_ids": ["SKU-1"]},
    }
    event.update(overrides)
    return event


def with_field(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``event`` with the dotted ``path`` set to ``value`` (or removed)."""
    out = copy.deepcopy(event)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return out


@dataclass
class Graph:
    url: str
    state: SandboxState
    session: aiohttp.ClientSession

    def events_url(self, pixel: str = PIXEL, version: str = "v25.0") -> str:
        return f"{self.url}/{version}/{pixel}/events"

    async def send(
        self, events: list[Any], *, token: str | None = TOKEN, pixel: str = PIXEL, **extra: Any
    ) -> tuple[int, dict[str, Any], Any]:
        body: dict[str, Any] = {"data": events, **extra}
        if token is not None:
            body["access_token"] = token
        return await self.post(self.events_url(pixel), json=body)

    async def post(self, url: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.session.post(url, **kw) as resp:
            return resp.status, orjson.loads(await resp.read()), resp.headers

    async def control(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.url}/_sandbox/{path}", **kw) as resp:
            return resp.status, orjson.loads(await resp.read())


@pytest.fixture
async def make_graph() -> AsyncIterator[Callable[..., Any]]:
    runners = []
    session = aiohttp.ClientSession()

    async def start(**kw: Any) -> Graph:
        kw.setdefault("access_token", TOKEN)
        kw.setdefault("pixel_id", PIXEL)
        runner, url, state = await start_sandbox(clock=lambda: NOW, **kw)
        runners.append(runner)
        return Graph(url, state, session)

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def graph(make_graph: Callable[..., Any]) -> Graph:
    graph: Graph = await make_graph()
    return graph


def assert_graph_error(body: dict[str, Any], code: int, subcode: int | None = None) -> None:
    error = body["error"]
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["message"]
    assert error["type"]
    assert error["fbtrace_id"]


# ---------------------------------------------------------------- accepting


async def test_a_valid_batch_is_accepted_and_recorded(graph: Graph) -> None:
    page_view = an_event("evt-2", event_name="PageView")
    del page_view["custom_data"]
    events = [an_event("evt-1"), page_view]
    status, body, headers = await graph.send(
        events, test_event_code="TEST123", partner_agent="capi-sidecar/0.1.0"
    )
    assert status == 200
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert headers["x-fb-trace-id"] == body["fbtrace_id"]
    assert headers["facebook-api-version"] == "v25.0"
    assert graph.state.events == events
    assert graph.state.events_total == 2
    (request,) = graph.state.requests
    assert (request.status, request.pixel_id, request.version) == (200, PIXEL, "v25.0")
    assert request.event_ids == ["evt-1", "evt-2"]
    assert request.test_event_code == "TEST123"
    assert request.partner_agent == "capi-sidecar/0.1.0"
    assert request.token_source == "body"
    assert request.token_in_url is False
    assert "access_token" not in request.body


async def test_every_answer_carries_a_fresh_fbtrace_id(graph: Graph) -> None:
    first = await graph.send([an_event()])
    second = await graph.send([an_event()], token="wrong")
    assert first[1]["fbtrace_id"] != second[1]["error"]["fbtrace_id"]


async def test_an_event_just_inside_seven_days_is_accepted(graph: Graph) -> None:
    status, _, _ = await graph.send([an_event(event_time=NOW - 7 * DAY + 60)])
    assert status == 200


async def test_exactly_one_thousand_events_are_accepted(graph: Graph) -> None:
    status, body, _ = await graph.send([an_event(f"e{i}") for i in range(1000)])
    assert (status, body["events_received"]) == (200, 1000)


async def test_hashes_may_be_single_strings_and_other_identifiers_are_accepted(
    graph: Graph,
) -> None:
    event = an_event(
        user_data={
            "ph": EMAIL_HASH,
            "fbc": "fb.1.1554763741205.IwAR2F4",
            "client_ip_address": "2001:db8::1",
            "lead_id": 1234,
            "fb_login_id": "5678",
        }
    )
    assert (await graph.send([event]))[0] == 200


async def test_a_value_may_be_a_number_or_a_numeric_string(graph: Graph) -> None:
    events = [
        an_event("a", custom_data={"currency": "eur", "value": 10}),
        an_event("b", custom_data={"currency": "EUR", "value": 10.5}),
        an_event("c", custom_data={"currency": "EUR", "value": "0"}),
    ]
    assert (await graph.send(events))[0] == 200


async def test_without_a_configured_token_or_pixel_any_are_accepted(
    make_graph: Callable[..., Any],
) -> None:
    graph: Graph = await make_graph(access_token=None, pixel_id=None)
    status, _, _ = await graph.send([an_event()], token="anything", pixel="sandbox-pixel")
    assert status == 200


# ---------------------------------------------------------------- rejecting events

INVALID = 2804001
BAD_EVENTS = [
    ("event_name", DELETE, INVALID, "event_name is required"),
    ("event_time", DELETE, INVALID, "event_time is required"),
    ("action_source", DELETE, INVALID, "action_source is required"),
    ("user_data", DELETE, INVALID, "user_data is required"),
    ("event_name", "X" * 51, INVALID, "longer than 50"),
    ("event_name", "", INVALID, "event_name must not be empty"),
    ("event_name", None, INVALID, "event_name must not be null"),
    ("event_time", str(NOW), INVALID, "event_time must be an integer"),
    ("event_time", NOW + 0.5, INVALID, "event_time must be an integer"),
    ("event_time", True, INVALID, "event_time must be an integer"),
    ("event_time", NOW - 8 * DAY, 2804003, "more than 7 days"),
    ("event_time", NOW + 3600, 2804019, "in the future"),
    ("action_source", "web", INVALID, "action_source must be one of"),
    ("event_id", 123, INVALID, "event_id must be a string"),
    ("event_source_url", None, INVALID, "must not be null"),
    ("surprise", 1, INVALID, "unknown parameter 'surprise'"),
    ("user_data", {}, 2804050, "no customer information"),
    ("user_data", {"client_user_agent": "UA"}, 2804050, "so broad"),
    ("user_data", {"fn": EMAIL_HASH, "ge": EMAIL_HASH}, 2804050, "so broad"),
    ("user_data", [], INVALID, "user_data must be an object"),
    ("user_data.em", "jane@example.com", INVALID, "SHA-256"),
    ("user_data.em", ["jane@example.com"], INVALID, "SHA-256"),
    ("user_data.em", [EMAIL_HASH.upper()], INVALID, "lowercase"),
    ("user_data.em", [], INVALID, "SHA-256"),
    ("user_data.em", "", INVALID, "SHA-256"),
    ("user_data.em", None, INVALID, "SHA-256"),
    ("user_data.ph", "+1 650 555 1212", INVALID, "user_data.ph"),
    ("user_data.external_id", ["user-1"], INVALID, "user_data.external_id"),
    ("user_data.fbp", None, INVALID, "user_data.fbp"),
    ("user_data.client_user_agent", "", INVALID, "client_user_agent"),
    ("user_data.client_ip_address", "not-an-ip", INVALID, "IPv4 or IPv6"),
    ("user_data.email", EMAIL_HASH, INVALID, "unknown parameter 'email'"),
    ("custom_data", None, INVALID, "custom_data must not be null"),
    ("custom_data.currency", "US", INVALID, "ISO 4217"),
    ("custom_data.currency", "US1", INVALID, "ISO 4217"),
    ("custom_data.value", "forty", INVALID, "value must be a number"),
    ("custom_data.value", True, INVALID, "value must be a number"),
    ("custom_data.value", DELETE, INVALID, "Purchase event without"),
    ("action_source", "app", INVALID, "app_data"),
]


@pytest.mark.parametrize(
    ("path", "value", "subcode", "fragment"),
    BAD_EVENTS,
    ids=[f"{p}={v!r:.30}" for p, v, _, _ in BAD_EVENTS],
)
async def test_one_invalid_event_fails_the_whole_batch(
    graph: Graph, path: str, value: Any, subcode: int, fragment: str
) -> None:
    events = [an_event("good-1"), with_field(an_event("bad"), path, value), an_event("good-2")]
    status, body, _ = await graph.send(events)
    assert status == 400
    assert_graph_error(body, 100, subcode)
    assert "data[1]" in body["error"]["message"]
    assert fragment in body["error"]["message"]
    assert graph.state.events == []
    assert graph.state.requests[-1].status == 400


async def test_a_seven_day_old_event_is_refused_as_too_old(graph: Graph) -> None:
    status, body, _ = await graph.send([an_event(event_time=NOW - 7 * DAY - 1)])
    assert status == 400
    assert_graph_error(body, 100, 2804003)
    assert body["error"]["error_user_title"] == "Event Timestamp Too Old"


async def test_a_raw_email_is_refused_and_not_echoed(graph: Graph) -> None:
    event = with_field(an_event(), "user_data.em", "jane@example.com")
    status, body, _ = await graph.send([event])
    assert status == 400
    assert_graph_error(body, 100, INVALID)
    assert "jane@example.com" not in orjson.dumps(body).decode()


async def test_an_element_of_data_that_is_not_an_object_fails_the_batch(graph: Graph) -> None:
    status, body, _ = await graph.send([an_event(), 42])
    assert status == 400
    assert "data[1] must be a JSON object" in body["error"]["message"]


async def test_more_than_one_thousand_events_are_refused(graph: Graph) -> None:
    status, body, _ = await graph.send([an_event(f"e{i}") for i in range(1001)])
    assert status == 400
    assert_graph_error(body, 100, INVALID)
    assert "1001" in body["error"]["message"]
    assert graph.state.events == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data": []},
        {"data": {"event_name": "x"}},
        {"data": "not json"},
        {"data": [an_event()], "partner_agent": 7},
    ],
)
async def test_a_missing_or_malformed_data_parameter_is_refused_with_code_100(
    graph: Graph, body: dict[str, Any]
) -> None:
    status, answer, _ = await graph.post(graph.events_url(), json={**body, "access_token": TOKEN})
    assert status == 400
    assert_graph_error(answer, 100)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_refused(graph: Graph, raw: bytes) -> None:
    status, body, _ = await graph.post(
        graph.events_url(), data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert_graph_error(body, 100)


async def test_an_unknown_api_version_is_refused(graph: Graph) -> None:
    status, body, _ = await graph.post(
        graph.events_url(version="latest"), json={"data": [an_event()], "access_token": TOKEN}
    )
    assert status == 400
    assert_graph_error(body, 2500)


# ---------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("body_token", "header"),
    [
        ("wrong-token", None),
        (None, None),
        ("", None),
        (None, "Bearer wrong-token"),
    ],
)
async def test_a_wrong_or_missing_token_answers_401_with_code_190(
    graph: Graph, body_token: str | None, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    body: dict[str, Any] = {"data": [an_event()]}
    if body_token is not None:
        body["access_token"] = body_token
    status, answer, resp_headers = await graph.post(graph.events_url(), json=body, headers=headers)
    assert status == 401
    assert_graph_error(answer, 190)
    assert answer["error"]["type"] == "OAuthException"
    assert "WWW-Authenticate" in resp_headers
    assert graph.state.events == []


async def test_the_token_may_come_as_a_bearer_header(graph: Graph) -> None:
    status, _, _ = await graph.post(
        graph.events_url(),
        json={"data": [an_event()]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200
    assert graph.state.requests[-1].token_source == "header"
    assert graph.state.requests[-1].token_in_url is False


async def test_a_token_in_the_url_is_accepted_but_flagged(graph: Graph) -> None:
    status, _, _ = await graph.post(
        graph.events_url(), params={"access_token": TOKEN}, json={"data": [an_event()]}
    )
    assert status == 200
    request = graph.state.requests[-1]
    assert request.token_in_url is True
    assert request.token_source == "query"
    assert TOKEN not in repr(request)


async def test_a_pixel_that_is_not_the_configured_one_answers_100_33(graph: Graph) -> None:
    status, body, _ = await graph.send([an_event()], pixel="111111")
    assert status == 400
    assert_graph_error(body, 100, 33)
    assert "Unsupported post request" in body["error"]["message"]
    assert graph.state.requests[-1].pixel_id == "111111"


def proof(token: str = TOKEN, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("given", "expected_status"),
    [
        (proof(), 200),
        (None, 400),
        ("0" * 64, 400),
        (proof(secret="other"), 400),
    ],
)
async def test_with_an_app_secret_the_appsecret_proof_is_checked(
    make_graph: Callable[..., Any], given: str | None, expected_status: int
) -> None:
    graph: Graph = await make_graph(app_secret=SECRET)
    extra = {} if given is None else {"appsecret_proof": given}
    status, body, _ = await graph.send([an_event()], **extra)
    assert status == expected_status
    if expected_status != 200:
        assert_graph_error(body, 100)
        assert "appsecret_proof" in body["error"]["message"]


async def test_the_token_is_never_logged(graph: Graph, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await graph.post(
        graph.events_url(), params={"access_token": TOKEN}, json={"data": [an_event()]}
    )
    await graph.post(
        graph.events_url(), params={"access_token": TOKEN}, json={"data": [an_event(event_time=0)]}
    )
    graph.state.inject(Fault(status=500))
    await graph.send([an_event()])
    assert "/events 200" in caplog.text
    assert "2804003" in caplog.text
    assert TOKEN not in caplog.text


# ---------------------------------------------------------------- SDK-style bodies


async def test_a_form_encoded_body_in_the_python_sdk_shape_is_accepted(graph: Graph) -> None:
    events = [an_event("f-1"), an_event("f-2")]
    data = orjson.dumps([orjson.dumps(e).decode() for e in events]).decode()
    status, body, _ = await graph.post(
        graph.events_url(),
        params={"access_token": TOKEN},
        data={"data": data, "partner_agent": "sdk"},
    )
    assert (status, body["events_received"]) == (200, 2)
    request = graph.state.requests[-1]
    assert request.body_format == "form"
    assert request.token_in_url is True
    assert request.events == events
    assert graph.state.events == events


async def test_a_form_body_with_an_array_of_objects_and_the_token_field_is_accepted(
    graph: Graph,
) -> None:
    form = {"data": orjson.dumps([an_event()]).decode(), "access_token": TOKEN}
    status, _, _ = await graph.post(graph.events_url(), data=form)
    assert status == 200
    assert graph.state.requests[-1].token_in_url is False


async def test_a_gzipped_json_body_is_accepted(graph: Graph) -> None:
    body = gzip.compress(orjson.dumps({"data": [an_event()], "access_token": TOKEN}))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, _, _ = await graph.post(graph.events_url(), data=body, headers=headers)
    assert status == 200


async def test_the_official_python_sdk_can_post_to_the_sandbox(
    make_graph: Callable[..., Any],
) -> None:
    pytest.importorskip("facebook_business")
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.adobjects.serverside.user_data import UserData
    from facebook_business.api import FacebookAdsApi

    graph: Graph = await make_graph(app_secret=SECRET)
    api = FacebookAdsApi.init(access_token=TOKEN, app_secret=SECRET, api_version="v25.0")
    api._session.GRAPH = graph.url
    event = Event(
        event_name="Purchase",
        event_time=NOW - 60,
        event_id="sdk-1",
        action_source=ActionSource.WEBSITE,
        event_source_url="https://shop.example/",
        user_data=UserData(
            emails=["Jane@Example.com"],
            external_ids=[USER_HASH],
            client_ip_address="203.0.113.9",
            client_user_agent="sdk-test",
        ),
        custom_data=CustomData(currency="usd", value=42.5),
    )
    request = EventRequest(pixel_id=PIXEL, events=[event], test_event_code="TEST42")
    try:
        response = await asyncio.to_thread(request.execute)
    finally:
        api._session.requests.close()
        FacebookAdsApi.set_default_api(None)
    assert response.events_received == 1
    (accepted,) = graph.state.events
    assert accepted["user_data"]["em"] == [EMAIL_HASH]
    assert graph.state.requests[-1].test_event_code == "TEST42"


# ---------------------------------------------------------------- faults


async def test_a_500_fault_answers_a_transient_graph_error_once(graph: Graph) -> None:
    graph.state.inject(Fault(status=500))
    status, body, _ = await graph.send([an_event()])
    assert status == 500
    assert_graph_error(body, 1)
    assert body["error"]["is_transient"] is True
    assert graph.state.events == []
    assert graph.state.requests[-1].faulted is True
    assert (await graph.send([an_event()]))[0] == 200


async def test_a_429_fault_carries_retry_after(graph: Graph) -> None:
    graph.state.inject(Fault(status=429, retry_after="7"))
    status, body, headers = await graph.send([an_event()])
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert_graph_error(body, 4)


async def test_retry_after_alone_answers_429_and_may_be_an_http_date(graph: Graph) -> None:
    when = "Wed, 21 Oct 2026 07:28:00 GMT"
    graph.state.inject(Fault(retry_after=when))
    status, _, headers = await graph.send([an_event()])
    assert (status, headers["Retry-After"]) == (429, when)


@pytest.mark.parametrize(
    ("graph_error", "status", "code"),
    [
        ({"code": 17, "message": "User request limit reached", "is_transient": True}, 400, 17),
        ({"code": 190, "error_subcode": 463, "message": "Session has expired"}, 401, 190),
        ({"code": 100, "error_subcode": 2804050, "type": "OAuthException"}, 400, 100),
    ],
)
async def test_a_graph_error_fault_answers_that_error(
    graph: Graph, graph_error: dict[str, Any], status: int, code: int
) -> None:
    graph.state.inject(Fault(graph_error=graph_error))
    got_status, body, _ = await graph.send([an_event()])
    assert got_status == status
    assert_graph_error(body, code, graph_error.get("error_subcode"))
    if "is_transient" in graph_error:
        assert body["error"]["is_transient"] is True


async def test_a_raw_body_fault_answers_without_the_graph_envelope(graph: Graph) -> None:
    graph.state.inject(Fault(status=502, body="<html>Bad Gateway</html>"))
    async with graph.session.post(graph.events_url(), json={"data": [an_event()]}) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert await resp.text() == "<html>Bad Gateway</html>"


async def test_a_delay_fault_adds_latency_then_answers_normally(graph: Graph) -> None:
    graph.state.inject(Fault(delay_seconds=0.3))
    started = time.monotonic()
    status, _, _ = await graph.send([an_event()])
    assert status == 200
    assert time.monotonic() - started >= 0.3


async def test_a_delay_longer_than_the_client_timeout_looks_like_a_timeout(graph: Graph) -> None:
    graph.state.inject(Fault(delay_seconds=5))
    with pytest.raises(asyncio.TimeoutError):
        await graph.post(
            graph.events_url(),
            json={"data": [an_event()], "access_token": TOKEN},
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


async def test_a_dropped_connection_gets_no_answer_and_the_next_request_works(
    graph: Graph,
) -> None:
    graph.state.inject(Fault(drop_connection=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await graph.send([an_event()])
    assert graph.state.requests[-1].status == 0
    assert (await graph.send([an_event()]))[0] == 200


async def test_a_fault_applies_for_its_number_of_times(graph: Graph) -> None:
    graph.state.inject(Fault(status=503, times=2))
    statuses = [(await graph.send([an_event()]))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]


@pytest.mark.parametrize("times", [0, None])
async def test_a_fault_with_times_zero_or_none_lasts_until_cleared(
    graph: Graph, times: int | None
) -> None:
    graph.state.inject(Fault(status=500, times=times))
    statuses = [(await graph.send([an_event()]))[0] for _ in range(4)]
    graph.state.clear()
    assert statuses == [500] * 4
    assert (await graph.send([an_event()]))[0] == 200


async def test_faults_fire_in_order_of_injection(graph: Graph) -> None:
    graph.state.inject(Fault(status=500))
    graph.state.inject(Fault(status=429, times=2))
    graph.state.inject(Fault(graph_error={"code": 2, "is_transient": True}))
    statuses = [(await graph.send([an_event()]))[0] for _ in range(5)]
    assert statuses == [500, 429, 429, 400, 200]


async def test_rejected_event_ids_fail_every_batch_holding_them_until_cleared(
    graph: Graph,
) -> None:
    graph.state.inject(Fault(reject_event_ids={"bad-2"}, times=None))
    batch = [an_event(f"ok-{i}") for i in range(4)]
    batch.insert(2, an_event("bad-2"))
    status, body, _ = await graph.send(batch)
    assert status == 400
    assert_graph_error(body, 100, 2804001)
    assert "'bad-2'" in body["error"]["message"]
    assert "data[2]" in body["error"]["message"]
    # bisecting: the half without the bad event goes through, the half with it fails again
    assert (await graph.send(batch[:2]))[0] == 200
    assert (await graph.send(batch[2:]))[0] == 400
    assert (await graph.send(batch[3:]))[0] == 200
    assert (await graph.send([batch[2]]))[0] == 400
    assert [e["event_id"] for e in graph.state.events] == ["ok-0", "ok-1", "ok-2", "ok-3"]


async def test_a_reject_fault_counts_only_the_batches_it_rejects(graph: Graph) -> None:
    graph.state.inject(Fault(reject_event_ids={"bad"}))
    assert (await graph.send([an_event("fine")]))[0] == 200
    assert (await graph.send([an_event("bad")]))[0] == 400
    assert (await graph.send([an_event("bad")]))[0] == 200


async def test_a_reject_fault_does_not_hold_back_later_faults(graph: Graph) -> None:
    graph.state.inject(Fault(reject_event_ids={"bad"}, times=None))
    graph.state.inject(Fault(status=503))
    assert (await graph.send([an_event("fine")]))[0] == 503
    assert (await graph.send([an_event("bad")]))[0] == 400


async def test_a_delayed_answer_is_cut_short_when_the_sandbox_shuts_down() -> None:
    runner, url, state = await start_sandbox(access_token=TOKEN, clock=lambda: NOW)
    state.inject(Fault(delay_seconds=60))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(
            session.post(
                f"{url}/v25.0/{PIXEL}/events", json={"data": [an_event()], "access_token": TOKEN}
            )
        )
        while len(state.faults):
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await runner.cleanup()
        async with await pending as resp:
            assert resp.status == 200
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "fields",
    [
        {"status": 99},
        {"delay_seconds": -1},
        {"times": -1},
        {"graph_error": {"code": "17"}},
        {"graph_error": {"colour": "red"}},
    ],
)
def test_a_fault_with_impossible_fields_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Fault(**fields)


# ---------------------------------------------------------------- control API


async def test_faults_can_be_injected_listed_and_cleared_over_http(graph: Graph) -> None:
    status, doc = await graph.control(
        "POST",
        "faults",
        json=[
            {"status": 503, "times": 2, "retry_after": 3},
            {"reject_event_ids": ["x"], "times": None},
        ],
    )
    assert (status, doc["faults_pending"]) == (201, 2)
    _, listed = await graph.control("GET", "faults")
    assert [f["remaining"] for f in listed] == [2, None]
    assert listed[0]["retry_after"] == "3"
    assert (await graph.send([an_event()]))[0] == 503
    assert (await graph.control("DELETE", "faults"))[0] == 200
    assert (await graph.control("GET", "faults"))[1] == []
    assert (await graph.send([an_event("x")]))[0] == 200


@pytest.mark.parametrize(
    "payload", [b"{", b'{"status": "500"}', b'{"nope": 1}', b'{"reject_event_ids": "x"}', b"[1]"]
)
async def test_a_bad_fault_over_http_is_refused_with_a_reason(graph: Graph, payload: bytes) -> None:
    status, doc = await graph.control("POST", "faults", data=payload)
    assert status == 400
    assert doc["error"]
    assert len(graph.state.faults) == 0


async def test_accepted_events_and_request_summaries_can_be_read_and_cleared(
    graph: Graph,
) -> None:
    await graph.send([an_event("a"), an_event("b")], test_event_code="T1")
    await graph.send([an_event("c", event_time=0)])
    status, events = await graph.control("GET", "events")
    assert (status, [e["event_id"] for e in events]) == (200, ["a", "b"])
    _, only_b = await graph.control("GET", "events", params={"event_id": "b"})
    assert [e["event_id"] for e in only_b] == ["b"]
    _, requests = await graph.control("GET", "requests")
    assert [(r["status"], r["event_count"], r["event_ids"]) for r in requests] == [
        (200, 2, ["a", "b"]),
        (400, 1, ["c"]),
    ]
    assert requests[0]["test_event_code"] == "T1"
    assert requests[0]["pixel_id"] == PIXEL
    assert requests[0]["token_in_url"] is False
    assert requests[1]["error"]["error_subcode"] == 2804003
    _, health = await graph.control("GET", "health")
    assert health == {
        "status": "ok",
        "events_total": 2,
        "events_recorded": 2,
        "requests_total": 2,
        "faults_pending": 0,
    }
    assert (await graph.control("DELETE", "records"))[0] == 200
    assert (await graph.control("GET", "events"))[1] == []
    assert (await graph.control("GET", "requests"))[1] == []


async def test_records_are_bounded_and_the_oldest_dropped(
    make_graph: Callable[..., Any],
) -> None:
    graph: Graph = await make_graph(max_records=5)
    for batch in range(3):
        await graph.send([an_event(f"{batch}-{i}") for i in range(3)])
    assert [e["event_id"] for e in graph.state.events] == ["1-1", "1-2", "2-0", "2-1", "2-2"]
    assert graph.state.events_total == 9
    # requests are kept while they hold at most max_records events; the newest always stays
    assert [r.event_ids[0] for r in graph.state.requests] == ["2-0"]
    assert graph.state.requests_total == 3


async def test_requests_are_bounded_by_count_too(make_graph: Callable[..., Any]) -> None:
    graph: Graph = await make_graph(max_requests=2)
    for batch in range(3):
        await graph.send([an_event(f"{batch}")])
    assert [r.event_ids for r in graph.state.requests] == [["1"], ["2"]]
    assert len(graph.state.events) == 3


def test_the_app_exposes_its_state_under_the_typed_key() -> None:
    app = create_sandbox_app(access_token=TOKEN, pixel_id=PIXEL)
    state = app[SANDBOX_STATE]
    assert (state.access_token, state.pixel_id, state.app_secret) == (TOKEN, PIXEL, None)


async def test_run_sandbox_serves_until_sigterm_and_logs_its_url_but_not_the_token() -> None:
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from sidecar.sandbox import run_sandbox;"
        f"run_sandbox('127.0.0.1', 0, {TOKEN!r})"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=Path(__file__).resolve().parents[1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    try:
        while b"listening on" not in output:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            assert line, output.decode()
            output += line
        match = re.search(rb"listening on (http://[0-9.:]+)", output)
        assert match is not None
        health_url = match.group(1).decode() + "/_sandbox/health"
        async with aiohttp.ClientSession() as session, session.get(health_url) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        output += await asyncio.wait_for(proc.stdout.read(), timeout=20)
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert TOKEN.encode() not in output
