"""Never lose, never poison: a real sidecar against a real sandbox with injected faults.

Every test ends with the no-loss invariant (tests/invariants.py): each
acknowledged messageId in exactly one final state, every delivered one
received by the sandbox with the same event_id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.outbox import EXPIRED_REASON
from sidecar.sandbox import Fault, start_sandbox
from tests.conftest import PIXEL, TOKEN, Sandbox, Sidecar
from tests.invariants import (
    assert_no_loss,
    batch,
    count_unsettled,
    eventually,
    http_date,
    post_batch,
    running_sidecar,
    stored_message_ids,
    wait_until_settled,
)

DAY = 86400.0


async def ingest(sc: Sidecar, n: int, event: str = "Product Added") -> list[str]:
    messages = batch(n, event)
    resp = await post_batch(sc.session, sc.url, messages)
    assert resp.status == 200, await resp.text()
    return [m["messageId"] for m in messages]


def db(sc: Sidecar) -> Path:
    return sc.runtime.settings.db_path


async def ops_get(sc: Sidecar, path: str) -> tuple[int, Any]:
    async with sc.session.get(sc.ops_url + path) as r:
        return r.status, await r.json()


def graph_fault(code: int, status: int = 400, times: int | None = 3, **extra: Any) -> Fault:
    return Fault(status=status, graph_error={"code": code, "message": f"code {code}", **extra},
                 times=times)


# ------------------------------------------------------------- transient
TRANSIENT_FAULTS = {
    "HTTP 500 burst": Fault(status=500, times=3),
    "HTTP 503 burst": Fault(status=503, times=3),
    "HTTP 502 HTML page from a proxy": Fault(status=502, body="<html>Bad gateway</html>",
                                             times=3),
    "HTTP 429 without Retry-After": Fault(status=429, times=3),
    "timeout (Meta slower than the request timeout)": Fault(delay_seconds=1.5, times=2),
    "dropped connection": Fault(drop_connection=True, times=3),
    "code 2 temporary downtime": graph_fault(2, status=503),
    "code 4 application throttled": graph_fault(4),
    "code 17 user request limit": graph_fault(17),
    "code 613 rate limit": graph_fault(613),
    "code 80004 ads throttling": graph_fault(80004),
    "negative code": graph_fault(-1),
    "is_transient true": graph_fault(100, is_transient=True),
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
async def test_transient_failures_are_retried_until_every_event_is_delivered(
    sandbox: Sandbox, tmp_path: Path, fault: Fault
) -> None:
    sandbox.state.inject(fault)
    async with running_sidecar(tmp_path, sandbox, request_timeout_seconds=0.3) as sc:
        ids = await ingest(sc, 25)
        await wait_until_settled(db(sc))
        settled = assert_no_loss(db(sc), ids, {"default": sandbox.state})
    assert settled.delivered["default"] == set(ids)
    assert len(sandbox.state.faults) == 0, "the fault never fired"


@pytest.mark.parametrize("form", ["delta-seconds", "HTTP-date"])
async def test_a_429_with_retry_after_is_not_retried_before_the_deadline(
    sandbox: Sandbox, tmp_path: Path, form: str
) -> None:
    async with running_sidecar(tmp_path, sandbox) as sc:
        if form == "delta-seconds":
            sandbox.state.inject(Fault(status=429, retry_after="1", times=1))
        else:
            # The header has whole seconds: the deadline is that second.
            deadline: float = math.floor(time.time()) + 2
            sandbox.state.inject(Fault(status=429, retry_after=http_date(deadline), times=1))
        ids = await ingest(sc, 5)
        await wait_until_settled(db(sc))
        assert_no_loss(db(sc), ids, {"default": sandbox.state})
    refused, *later = sandbox.state.requests
    assert refused.status == 429
    if form == "delta-seconds":
        deadline = refused.received_at + 1.0
    assert later and all(r.received_at >= deadline - 0.01 for r in later)


# ------------------------------------------------------------------ poison
@pytest.mark.parametrize("subcode", [2804001, 2804050, 2804019])
async def test_one_poison_event_in_a_thousand_is_isolated_by_bisection(
    sandbox: Sandbox, tmp_path: Path, subcode: int
) -> None:
    # A backlog of 1,000 builds up while Meta is down; the next start sends it
    # as one batch of 1,000 (FIFO), and Meta rejects that batch for one event.
    sandbox.state.inject(Fault(status=503, times=0))
    async with running_sidecar(tmp_path, sandbox) as sc:
        ids = []
        for _ in range(10):
            ids += await ingest(sc, 100)
        await eventually(lambda: sandbox.state.requests, what="a failed attempt")
    poison = ids[613]
    sandbox.state.clear()
    sandbox.state.inject(Fault(
        reject_event_ids={poison}, times=0,
        graph_error={"code": 100, "error_subcode": subcode, "message": "Invalid parameter",
                     "error_user_msg": f"event {poison} is invalid"},
    ))
    await asyncio.sleep(0.25)  # let every row's backoff (cap 0.2 s) run out
    async with running_sidecar(tmp_path, sandbox, batch_size=1000) as sc:
        await wait_until_settled(db(sc))
        settled = assert_no_loss(db(sc), ids, {"default": sandbox.state})
        status = await sc.event(poison)
    assert settled.delivered["default"] == set(ids) - {poison}
    assert set(settled.dead["default"]) == {poison}
    requests = sandbox.state.requests
    assert len(requests) <= 2 * math.ceil(math.log2(1000)) + 2, len(requests)
    assert len(requests[0].events) == 1000, "the batch was not sent whole first"
    (alone,) = [r for r in requests if r.event_ids == [poison]]
    assert status is not None
    error = status["destinations"]["default"]["last_error"]
    assert error["code"] == 100
    assert error["subcode"] == subcode
    assert error["message"] == f"event {poison} is invalid"
    assert error["fbtrace_id"] == alone.fbtrace_id
    assert status["destinations"]["default"]["reason"].startswith("rejected by Meta")


# ------------------------------------------------------------- credentials
def _wrong_token(state: Any) -> None:
    state.access_token = "a-token-meta-no-longer-accepts"


def _right_token(state: Any) -> None:
    state.access_token = TOKEN


CREDENTIAL_FAULTS = {
    "invalid token (190)": (_wrong_token, _right_token),
    "missing permission (10)": (
        lambda s: s.inject(graph_fault(10, status=403, times=0)), lambda s: s.clear_faults()),
    "permission code 200": (
        lambda s: s.inject(graph_fault(200, status=403, times=0)), lambda s: s.clear_faults()),
    "pixel not reachable (100/33)": (
        lambda s: s.inject(graph_fault(100, times=0, error_subcode=33)),
        lambda s: s.clear_faults()),
}


@pytest.mark.parametrize("break_it,fix_it", CREDENTIAL_FAULTS.values(),
                         ids=CREDENTIAL_FAULTS.keys())
async def test_bad_credentials_pause_the_destination_keep_the_events_and_resume_when_fixed(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture, break_it: Any,
    fix_it: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar.delivery")
    break_it(sandbox.state)
    async with running_sidecar(tmp_path, sandbox, paused_retry_seconds=0.2) as sc:
        ids = await ingest(sc, 40)
        ids += await ingest(sc, 40)
        await eventually(lambda: len(sandbox.state.requests) >= 4, what="probes")
        _, doc = await ops_get(sc, "/v1/status")
        dest = doc["destinations"]["default"]
        assert dest["paused"] is True
        last_error = sandbox.state.requests[-1].error
        assert last_error is not None
        assert dest["pause_error"]["code"] == last_error["code"]
        assert dest["pending"] == 80 and dest["dead"] == 0
        assert (await ops_get(sc, "/readyz"))[0] == 200
        async with sc.session.get(sc.ops_url + "/metrics") as r:
            assert 'capi_destination_paused{destination="default"} 1.0' in await r.text()
        # Paused: one event per probe, never the backlog.
        assert all(len(r.events) == 1 for r in sandbox.state.requests[1:])
        fix_it(sandbox.state)
        await wait_until_settled(db(sc))
        settled = assert_no_loss(db(sc), ids, {"default": sandbox.state})
        _, doc = await ops_get(sc, "/v1/status")
        assert doc["destinations"]["default"]["paused"] is False
    assert settled.delivered["default"] == set(ids)
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.delivery"]
    assert sum("paused" in line for line in lines) == 1, lines
    assert sum("resumed" in line for line in lines) == 1, lines


# ------------------------------------------------------------------ outage
async def test_a_long_outage_is_probed_on_the_backoff_schedule_and_then_drained(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    base, cap, outage = 0.1, 0.4, 2.5
    sandbox.state.inject(Fault(status=503, times=0))
    async with running_sidecar(tmp_path, sandbox, backoff_base_seconds=base,
                               backoff_cap_seconds=cap, batch_size=100) as sc:
        started = time.monotonic()
        ids: list[str] = []
        while time.monotonic() - started < outage:
            ids += await ingest(sc, 50)  # ingest keeps answering 200 through the outage
            assert (await ops_get(sc, "/readyz"))[0] == 200
            await asyncio.sleep(0.25)
        during = len(sandbox.state.requests)
        sandbox.state.clear_faults()
        await wait_until_settled(db(sc))
        settled = assert_no_loss(db(sc), ids, {"default": sandbox.state})
    assert settled.delivered["default"] == set(ids)
    # Full jitter under a 0.4 s cap waits 0.2 s on average: about 12 probes in
    # 2.5 s, plus the ramp-up. A hot loop would make hundreds.
    assert during <= outage / (cap / 2) * 2 + math.log2(cap / base) + 2, during
    after = len(sandbox.state.requests) - during
    assert after <= math.ceil(len(ids) / 100) + 2, after


# ------------------------------------------------------------------ expiry
class ShiftedClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_events_that_age_past_seven_days_during_an_outage_expire_and_are_never_sent(
    tmp_path: Path,
) -> None:
    clock = ShiftedClock()
    runner, url, state = await start_sandbox(access_token=TOKEN, pixel_id=PIXEL, clock=clock)
    sandbox = Sandbox(url, state)
    try:
        state.inject(Fault(status=503, times=0))
        async with running_sidecar(tmp_path, sandbox, clock=clock) as sc:
            ids = await ingest(sc, 20)
            await eventually(lambda: state.requests, what="a first failed attempt")
            clock.offset = 7 * DAY + 3600
            # A request already on its way carries events claimed before they
            # expired; count from when none is in flight: any later claim is
            # made at the shifted time and must leave the expired events out.
            drainer = sc.runtime.drainer
            assert drainer is not None
            await eventually(lambda: not any(t.in_flight for t in drainer.targets.values()),
                             what="no request in flight")
            seen = len(state.requests)
            await wait_until_settled(db(sc))
            state.clear_faults()
            fresh = await ingest(sc, 1)
            await wait_until_settled(db(sc))
            settled = assert_no_loss(db(sc), ids + fresh, {"default": state})
            status = await sc.event(ids[0])
        assert set(settled.dead["default"]) == set(ids)
        assert settled.delivered["default"] == set(fresh)
        assert status is not None
        assert status["destinations"]["default"]["reason"] == EXPIRED_REASON
        sent_after = {i for r in state.requests[seen:] for i in r.event_ids}
        assert not sent_after & set(ids)
    finally:
        await runner.cleanup()


# ------------------------------------------------------------ destinations
async def test_one_failing_destination_does_not_hold_up_another(tmp_path: Path) -> None:
    shop = await start_sandbox(access_token="shop-token", pixel_id="111")
    ads = await start_sandbox(access_token="ads-token", pixel_id="222")
    config = tmp_path / "capi.yaml"
    config.write_text(yaml.safe_dump({"destinations": [
        {"name": "shop", "pixel_id": "111", "access_token": "shop-token",
         "graph_url": shop[1], "events_filter": ["Purchase"]},
        {"name": "ads", "pixel_id": "222", "access_token": "ads-token", "graph_url": ads[1]},
    ]}))
    ads[2].inject(Fault(status=503, times=0))
    sandboxes = {"shop": shop[2], "ads": ads[2]}
    try:
        async with running_sidecar(tmp_path, None, config_file=str(config)) as sc:
            purchases = await ingest(sc, 10, "Order Completed")
            views = await ingest(sc, 10, "Product Viewed")

            outbox = sc.runtime.outbox
            assert outbox is not None

            async def shop_done() -> bool:
                stats = await outbox.stats(now=time.time())
                return bool(stats["shop"]["pending"] == 0)

            await eventually(shop_done, what="the healthy destination drained")
            assert len(shop[2].events) == 10
            assert ads[2].events == [] and ads[2].requests
            ads[2].clear_faults()
            await wait_until_settled(db(sc))
            settled = assert_no_loss(db(sc), purchases + views, sandboxes)
    finally:
        await shop[0].cleanup()
        await ads[0].cleanup()
    assert settled.delivered["shop"] == set(purchases)
    assert settled.skipped["shop"] == set(views)
    assert settled.delivered["ads"] == set(purchases + views)
    assert all(e["event_name"] == "Purchase" for e in shop[2].events)


# ------------------------------------------------------- backpressure, disk
async def test_a_full_disk_answers_503_stores_nothing_unacknowledged_and_recovers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with running_sidecar(tmp_path, sandbox) as sc:
        acked = await ingest(sc, 5)
        assert sc.runtime.outbox is not None
        await sc.runtime.outbox.set_size_limit(1)  # SQLITE_FULL from the next new page
        answers: dict[str, int] = {}
        refused_once = None
        for _ in range(10):
            messages = batch(50)
            resp = await post_batch(sc.session, sc.url, messages)
            for m in messages:
                answers[m["messageId"]] = resp.status
            if resp.status == 503:
                refused_once = resp
        assert refused_once is not None, "the size limit never bit"
        assert refused_once.headers["Retry-After"].isdigit()
        code, doc = await ops_get(sc, "/readyz")
        assert code == 503 and doc["reasons"]
        stored = stored_message_ids(db(sc))
        assert {m for m, s in answers.items() if s == 200} <= stored
        assert not {m for m, s in answers.items() if s == 503} & stored
        acked += [m for m, s in answers.items() if s == 200]
        await sc.runtime.outbox.set_size_limit(None)
        await eventually(lambda: ops_get(sc, "/readyz"), what="readiness back")
        assert (await ops_get(sc, "/readyz"))[0] == 200
        acked += await ingest(sc, 50)
        await wait_until_settled(db(sc))
        assert_no_loss(db(sc), acked, {"default": sandbox.state})


async def test_an_outbox_over_its_cap_answers_503_until_it_drains(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.state.inject(Fault(status=503, times=0))
    async with running_sidecar(tmp_path, sandbox, outbox_cap=30) as sc:
        acked = await ingest(sc, 20)
        acked += await ingest(sc, 20)  # crosses the cap: the cap is checked before a request
        messages = batch(5)
        resp = await post_batch(sc.session, sc.url, messages)
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        code, doc = await ops_get(sc, "/readyz")
        assert code == 503 and any("cap" in r for r in doc["reasons"])
        assert not {m["messageId"] for m in messages} & stored_message_ids(db(sc))
        sandbox.state.clear_faults()
        await wait_until_settled(db(sc))
        await eventually(lambda: ops_get(sc, "/readyz"), what="readiness back")
        assert (await ops_get(sc, "/readyz"))[0] == 200
        acked += await ingest(sc, 5)
        await wait_until_settled(db(sc))
        assert count_unsettled(db(sc)) == 0
        assert_no_loss(db(sc), acked, {"default": sandbox.state})


# ------------------------------------------------------------- conservation
def _random_faults(rand: random.Random, n: int) -> list[Fault]:
    makers = [
        lambda: Fault(status=rand.choice([500, 502, 503, 504]), times=rand.randint(1, 3)),
        lambda: Fault(drop_connection=True, times=rand.randint(1, 2)),
        lambda: Fault(delay_seconds=0.5, times=1),  # > the 0.3 s request timeout
        lambda: Fault(status=429, retry_after="0.2", times=1),
        lambda: graph_fault(rand.choice([1, 2, 4, 17, 613, 80004]), times=rand.randint(1, 2)),
        lambda: Fault(status=502, body="<html>proxy error</html>", times=1),
    ]
    return [rand.choice(makers)() for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_under_a_random_mix_of_faults_nothing_acknowledged_is_lost(
    sandbox: Sandbox, tmp_path: Path, seed: int
) -> None:
    rand = random.Random(seed)
    posts = [batch(rand.randint(1, 80)) for _ in range(6)]
    ids = [m["messageId"] for messages in posts for m in messages]
    poison = rand.choice(ids)
    sandbox.state.inject(Fault(reject_event_ids={poison}, times=0))
    async with running_sidecar(tmp_path, sandbox, request_timeout_seconds=0.3,
                               batch_size=50) as sc:
        for messages in posts:
            for fault in _random_faults(rand, 2):
                sandbox.state.inject(fault)
            assert (await post_batch(sc.session, sc.url, messages)).status == 200
            await asyncio.sleep(rand.uniform(0, 0.2))
        await wait_until_settled(db(sc), timeout=30)
        fresh = await ingest(sc, 1)  # liveness after the storm
        await wait_until_settled(db(sc))
        settled = assert_no_loss(db(sc), ids + fresh, {"default": sandbox.state})
    assert settled.delivered["default"] == set(ids + fresh) - {poison}
    assert set(settled.dead["default"]) == {poison}
