"""Delivery: the drainer that ships outbox rows to the Graph API.

Owns one loop per destination: claim a batch (a lease, so a crash gives it
back), build the request body by joining the stored payload bytes, POST it,
and settle every row by the verdict of ``policy``:

- success: rows delivered (only after Meta's 2xx: at-least-once);
- transient: rows retried later, backoff with full jitter, ``Retry-After`` honoured;
- invalid payload: a batch is bisected until each bad event is alone, the good
  halves are delivered, each bad event is dead with Meta's code and fbtrace_id;
- credentials: the destination pauses (loudly), rows are kept and probed slowly.

The access token lives only in the request body, never in a URL, a log line,
a span or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from sidecar import __version__
from sidecar.config import DestinationSettings, Settings
from sidecar.errors import OutboxError
from sidecar.outbox import Claimed, Outbox
from sidecar.policy import (
    Classified,
    Verdict,
    classify,
    network_error,
    next_attempt,
    parse_retry_after,
)
from sidecar.telemetry import COVERAGE_FIELDS, Telemetry

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 1.0
PARTNER_AGENT = f"capi-sidecar/{__version__}"


@dataclass
class Target:
    """A destination as the drainer sees it: where to POST and how."""

    settings: DestinationSettings
    url: str
    body_tail: bytes
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    paused_since: float | None = None
    pause_error: dict[str, Any] | None = None
    # Destination-wide hold after failures, so an outage is probed on the
    # backoff schedule instead of by every batch of the backlog in turn.
    hold_until: float = 0.0
    failures: int = 0
    idle: bool = False
    sent_requests: int = 0

    @property
    def name(self) -> str:
        return self.settings.name

    @classmethod
    def build(cls, dest: DestinationSettings) -> Target:
        extra: dict[str, Any] = {"access_token": dest.token, "partner_agent": PARTNER_AGENT}
        if dest.test_event_code:
            extra["test_event_code"] = dest.test_event_code
        if dest.app_secret is not None:
            extra["appsecret_proof"] = hmac.new(
                dest.app_secret.get_secret_value().encode(), dest.token.encode(), hashlib.sha256
            ).hexdigest()
        # Body = b'{"data":[' + payloads joined by ',' + b'],' + tail; the tail is
        # the rest of the JSON object, built once.
        tail = b"]," + orjson.dumps(extra)[1:]
        url = f"{dest.graph_url}/{dest.graph_api_version}/{dest.pixel_id}/events"
        return cls(settings=dest, url=url, body_tail=tail)

    def body(self, payloads: Sequence[bytes]) -> bytes:
        return b'{"data":[' + b",".join(payloads) + self.body_tail


class Drainer:
    """Moves pending outbox rows to Meta, one loop per destination."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Sequence[DestinationSettings],
        settings: Settings,
        session: aiohttp.ClientSession,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float] = time.time,
        rand: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.targets = {d.name: Target.build(d) for d in destinations}
        self.settings = settings
        self.session = session
        self.telemetry = telemetry
        self.clock = clock
        self.rand = rand or random.Random()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._slots = {name: asyncio.Semaphore(settings.concurrency) for name in self.targets}

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        for target in self.targets.values():
            self._tasks.append(asyncio.create_task(self._loop(target), name=f"drain-{target.name}"))

    def notify(self) -> None:
        """New work was committed: wake the loops."""
        for target in self.targets.values():
            target.wake.set()

    async def stop(self, budget: float) -> None:
        """Drain what is due within ``budget`` seconds, then cancel what is left.

        Rows whose requests are cancelled stay leased; the next start releases
        them and sends them again with the same event_id.
        """
        self.notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), timeout=max(0.0, budget))
        self._stopping = True
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._sends, return_exceptions=True)

    async def _drained(self) -> None:
        """Return once nothing is in flight and no destination has due work."""
        for target in self.targets.values():
            target.idle = False
        while self._sends or not all(t.idle for t in self.targets.values()):
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ loop
    async def _loop(self, target: Target) -> None:
        slots = self._slots[target.name]
        while not self._stopping:
            await slots.acquire()
            try:
                batch = await self._claim(target)
            except OutboxError:
                log.exception("claim failed for destination %s", target.name)
                slots.release()
                await asyncio.sleep(IDLE_POLL_SECONDS)
                continue
            if not batch:
                slots.release()
                target.idle = True
                await self._idle(target)
                continue
            target.idle = False
            task = asyncio.create_task(self._send_batch(target, batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            task.add_done_callback(lambda _t: slots.release())

    async def _claim(self, target: Target) -> list[Claimed]:
        now = self.clock()
        s = self.settings
        if now < target.hold_until:
            return []
        # A paused destination sends one event at a time until Meta accepts again.
        limit = 1 if target.paused_since is not None else s.batch_size
        return await self.outbox.claim(
            target.name, limit, now=now, lease=s.lease_seconds,
            oldest_event_time=now - s.max_event_age_seconds,
        )

    async def _idle(self, target: Target) -> None:
        target.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(target.wake.wait(), IDLE_POLL_SECONDS)
        if self.settings.linger_ms:
            # Let light traffic gather into one batch instead of one request each.
            await asyncio.sleep(self.settings.linger_ms / 1000)

    # ------------------------------------------------------------------ send
    async def _send_batch(self, target: Target, batch: list[Claimed]) -> None:
        try:
            await self._deliver(target, batch)
        except OutboxError:
            # The rows stay leased and come back after the lease.
            log.exception("could not record delivery results for %s", target.name)

    async def _deliver(self, target: Target, batch: list[Claimed]) -> None:
        result = await self._post(target, batch)
        verdict = result.verdict
        if verdict is Verdict.SUCCESS:
            await self._delivered(target, batch)
        elif verdict is Verdict.TRANSIENT:
            self._hold(target, result.retry_after)
            await self._retry(target, batch, result)
        elif verdict is Verdict.CREDENTIALS:
            await self._pause(target, batch, result)
        elif len(batch) == 1:
            await self._dead(target, batch, result)
        else:
            # Meta rejects the whole batch for one bad event: split until the
            # bad ones are alone; the halves go out concurrently.
            mid = len(batch) // 2
            await asyncio.gather(self._deliver(target, batch[:mid]),
                                 self._deliver(target, batch[mid:]))

    async def _post(self, target: Target, batch: list[Claimed]) -> Classified:
        m = self.telemetry.metrics
        resend = max(c.attempts for c in batch) - 1
        started = time.monotonic()
        with self.telemetry.delivery_span(
            target.name, target.settings.pixel_id, [c.traceparent for c in batch],
            [c.message_id for c in batch], resend,
        ) as span:
            result, status, body = await self._request(target, batch)
            span.set_attribute("http.request.method", "POST")
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if isinstance(body, dict):
                if body.get("fbtrace_id"):
                    span.set_attribute("meta.fbtrace_id", str(body["fbtrace_id"]))
                if isinstance(body.get("events_received"), int):
                    span.set_attribute("meta.events_received", body["events_received"])
            if result.error is not None:
                if result.error.fbtrace_id:
                    span.set_attribute("meta.fbtrace_id", result.error.fbtrace_id)
                if result.error.code is not None:
                    span.set_attribute("meta.error.code", result.error.code)
                span.set_attribute("error.type", result.verdict.value)
        target.sent_requests += 1
        m.graph_latency.labels(target.name).observe(time.monotonic() - started)
        m.batch_size.labels(target.name).observe(len(batch))
        code = str(result.error.code) if result.error and result.error.code is not None else ""
        m.graph_requests.labels(target.name, result.verdict.value, code).inc()
        return result

    async def _request(
        self, target: Target, batch: list[Claimed]
    ) -> tuple[Classified, int | None, Any]:
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_seconds)
        try:
            async with self.session.post(
                target.url, data=target.body([c.payload for c in batch]),
                headers={"Content-Type": "application/json"}, timeout=timeout,
            ) as resp:
                raw = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), now=self.clock())
                status = resp.status
        except TimeoutError:
            return network_error("timeout"), None, None
        except aiohttp.ClientError as err:
            # The exception text may carry the URL, never the token: the token
            # is in the body only.
            return network_error(f"network error: {type(err).__name__}"), None, None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return classify(status, body, retry_after), status, body

    # ---------------------------------------------------------------- settle
    def _hold(self, target: Target, retry_after: float | None) -> None:
        target.failures += 1
        s = self.settings
        target.hold_until = next_attempt(
            target.failures, now=self.clock(), base=s.backoff_base_seconds,
            cap=s.backoff_cap_seconds, rand=self.rand, retry_after=retry_after)

    async def _delivered(self, target: Target, batch: list[Claimed]) -> None:
        now = self.clock()
        target.failures = 0
        await self.outbox.mark_delivered([c.id for c in batch], now=now)
        if target.paused_since is not None:
            log.warning("destination %s resumed: Meta accepted a request again", target.name)
            target.paused_since = None
            target.pause_error = None
            self.telemetry.metrics.paused.labels(target.name).set(0)
        self.telemetry.metrics.deliveries.labels(target.name, "delivered", "").inc(len(batch))
        self.telemetry.record_coverage(target.name, [_user_data_keys(c.payload) for c in batch])
        for c in batch:
            self.telemetry.outcome(traceparent=c.traceparent, message_id=c.message_id,
                                   event_name=c.event_name, destination=target.name,
                                   outcome="delivered")

    async def _retry(self, target: Target, batch: list[Claimed], result: Classified) -> None:
        now = self.clock()
        s = self.settings
        times = [
            next_attempt(c.attempts, now=now, base=s.backoff_base_seconds,
                         cap=s.backoff_cap_seconds, rand=self.rand,
                         retry_after=result.retry_after)
            for c in batch
        ]
        error = result.error.as_dict() if result.error else None
        await self.outbox.mark_retry([c.id for c in batch], now=now, next_attempt_at=times,
                                     error=error)
        code = str(result.error.code) if result.error and result.error.code is not None else ""
        self.telemetry.metrics.deliveries.labels(target.name, "retry", code).inc(len(batch))
        for c in batch:
            self.telemetry.outcome(traceparent=c.traceparent, message_id=c.message_id,
                                   event_name=c.event_name, destination=target.name,
                                   outcome="retry",
                                   code=result.error.code if result.error else None,
                                   reason=result.error.message if result.error else None)

    async def _pause(self, target: Target, batch: list[Claimed], result: Classified) -> None:
        now = self.clock()
        error = result.error.as_dict() if result.error else None
        if target.paused_since is None:
            target.paused_since = now
            log.error(
                "destination %s paused: Meta refused the credentials or permissions "
                "(code %s, subcode %s, fbtrace_id %s); events are kept and retried every %.0fs "
                "until fixed",
                target.name, error and error["code"], error and error["subcode"],
                error and error["fbtrace_id"], self.settings.paused_retry_seconds,
            )
            self.telemetry.metrics.paused.labels(target.name).set(1)
        target.pause_error = error
        target.hold_until = now + self.settings.paused_retry_seconds
        await self.outbox.mark_retry(
            [c.id for c in batch], now=now,
            next_attempt_at=now + self.settings.paused_retry_seconds,
            error=error, refund_attempt=True,
        )

    async def _dead(self, target: Target, batch: list[Claimed], result: Classified) -> None:
        now = self.clock()
        err = result.error
        reason = f"rejected by Meta: {err.message}" if err else "rejected by Meta"
        await self.outbox.mark_dead([c.id for c in batch], now=now, reason=reason,
                                    error=err.as_dict() if err else None)
        code = str(err.code) if err and err.code is not None else ""
        self.telemetry.metrics.deliveries.labels(target.name, "dead", code).inc(len(batch))
        for c in batch:
            log.warning("event %s dead for %s: %s (code %s, subcode %s, fbtrace_id %s)",
                        c.message_id, target.name, err.message if err else "",
                        err and err.code, err and err.subcode, err and err.fbtrace_id)
            self.telemetry.outcome(traceparent=c.traceparent, message_id=c.message_id,
                                   event_name=c.event_name, destination=target.name,
                                   outcome="dead", code=err.code if err else None, reason=reason)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "pixel_id": t.settings.pixel_id,
                "sandbox": t.settings.sandbox,
                "paused": t.paused_since is not None,
                "paused_since": t.paused_since,
                "pause_error": t.pause_error,
                "requests_sent": t.sent_requests,
            }
            for name, t in self.targets.items()
        }


def _user_data_keys(payload: bytes) -> list[str]:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    user_data = event.get("user_data") if isinstance(event, dict) else None
    if not isinstance(user_data, dict):
        return []
    return [k for k in COVERAGE_FIELDS if k in user_data]
