"""Delivery: the drainer that ships outbox rows to the Graph API.

Owns one loop per destination: claim a batch (a lease, so a crash gives it
back), build the request body by joining the stored payload bytes, POST it,
and settle every row by the verdict of ``policy``:

- success: rows delivered (only after Meta's 2xx: at-least-once);
- transient: rows retried later, backoff with full jitter, ``Retry-After`` honoured;
- invalid payload: a batch is bisected until each bad event is alone, the good
  halves are delivered, each bad event is dead with Meta's code and fbtrace_id;
- credentials: the destination pauses (loudly), rows are kept and probed slowly;
- too old: an event past Meta's 7-day limit is never claimed; it is dead-lettered
  as expired before it could fail a whole batch.

Each destination has its own loop, hold and pause, so one failing pixel never
holds up another. While a destination is failing (a transient failure or a
pause) it sends one request at a time, and only when its hold has run out: an
outage is probed on the backoff schedule, never hot-looped by the backlog.

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
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 1.0
# How often each destination sweeps its too-old events into dead letters.
EXPIRE_EVERY_SECONDS = 1.0
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
    sent_requests: int = 0
    in_flight: int = 0  # batches being sent (a bisect counts once)
    drain_failed: bool = False  # failed during the shutdown drain: stop trying
    next_expiry: float = 0.0  # monotonic time of the next expiry sweep

    @property
    def probing(self) -> bool:
        """Failing or paused: one request at a time until Meta accepts again."""
        return self.failures > 0 or self.paused_since is not None

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
        # One join, with the head glued to the first payload and the tail to
        # the last: concatenating the ~1.3 MB joined batch with the head and
        # tail would copy it twice more (1.3 ms against 0.03 ms per batch).
        parts = list(payloads)
        if not parts:
            return b'{"data":[' + self.body_tail
        parts[0] = b'{"data":[' + parts[0]
        parts[-1] = parts[-1] + self.body_tail
        return b",".join(parts)


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
        for d in destinations:
            telemetry.add_destination(d.name, d.pixel_id)
        self.settings = settings
        self.session = session
        self.telemetry = telemetry
        self.clock = clock
        self.rand = rand or random.Random()
        self._stopping = False
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._leased: set[int] = set()  # rows claimed and not yet settled
        # Wake often enough to notice a row's short backoff (tests use tiny ones).
        self._poll = min(IDLE_POLL_SECONDS, max(0.01, settings.backoff_base_seconds))
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

        Rows whose requests are cancelled are released at once (the attempt
        refunded); they are sent again, with the same event_id, after the next
        start. Meta may have received some of them: it deduplicates event_id.
        """
        self._draining = True
        self.notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(self.clock() + budget), timeout=max(0.0, budget))
        self._stopping = True
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._sends, return_exceptions=True)
        if self._leased:
            try:
                n = await self.outbox.release(sorted(self._leased), now=self.clock())
            except OutboxError:
                # Not fatal: the next start releases every lease anyway.
                log.exception("could not release in-flight rows at shutdown")
            else:
                log.info("released %d in-flight deliveries for the next start", n)
            self._leased.clear()

    async def _drained(self, deadline: float) -> None:
        """Return once no destination has anything left to try before ``deadline``.

        The drain honours holds and Retry-After: a destination whose next due
        row comes after the deadline is done, and so is one that failed again
        during the drain (Meta is still down) or is paused (bad credentials).
        """
        while True:
            if not self._sends:
                done = [await self._drain_done(t, deadline) for t in self.targets.values()]
                if all(done):
                    return
            await asyncio.sleep(0.02)

    async def _drain_done(self, target: Target, deadline: float) -> bool:
        if target.in_flight:
            return False
        if target.paused_since is not None or target.drain_failed:
            return True
        now = self.clock()
        due = await self.outbox.next_due(
            target.name, oldest_event_time=now - self.settings.max_event_age_seconds
        )
        return due is None or max(due, target.hold_until) > deadline

    # ------------------------------------------------------------------ loop
    async def _loop(self, target: Target) -> None:
        slots = self._slots[target.name]
        while not self._stopping:
            await slots.acquire()
            try:
                batch = await self._claim(target)
            except Exception:
                # The loop is this destination's only worker: it must outlive
                # any failure (a full disk, a bug) and try again later.
                log.exception("claim failed for destination %s", target.name)
                slots.release()
                await asyncio.sleep(IDLE_POLL_SECONDS)
                continue
            if not batch:
                slots.release()
                await self._idle(target)
                continue
            target.in_flight += 1
            self._leased.update(c.id for c in batch)
            task = asyncio.create_task(self._send_batch(target, batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            task.add_done_callback(lambda _t: slots.release())
            if len(batch) < self.settings.batch_size and self.settings.linger_ms:
                # A short batch means the backlog is empty: let the next one
                # gather for linger_ms instead of claiming a handful of rows
                # per request, which under steady traffic would send tiny
                # batches back to back and queue claims and marks on the
                # writer thread ahead of ingest commits.
                await self._linger()

    async def _claim(self, target: Target) -> list[Claimed]:
        now = self.clock()
        s = self.settings
        oldest = now - s.max_event_age_seconds
        if time.monotonic() >= target.next_expiry:
            target.next_expiry = time.monotonic() + EXPIRE_EVERY_SECONDS
            await self._expire(target, now, oldest)
        if now < target.hold_until or (target.probing and target.in_flight):
            return []
        # A paused destination sends one event at a time until Meta accepts again.
        limit = 1 if target.paused_since is not None else s.batch_size
        return await self.outbox.claim(
            target.name, limit, now=now, lease=s.lease_seconds, oldest_event_time=oldest
        )

    async def _expire(self, target: Target, now: float, oldest: float) -> None:
        """Dead-letter this destination's events too old for Meta (never sent)."""
        expired = await self.outbox.expire_due(target.name, now, oldest)
        if not expired:
            return
        self.telemetry.expired(expired)
        log.warning(
            "%d event(s) for destination %s expired undelivered (older than %.0fs); "
            "they are dead letters",
            len(expired), target.name, self.settings.max_event_age_seconds,
        )

    async def _idle(self, target: Target) -> None:
        target.wake.clear()
        timeout = self._poll
        held = target.hold_until - self.clock()
        if held > 0:
            timeout = min(max(held, 0.001), IDLE_POLL_SECONDS)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(target.wake.wait(), timeout)
        if self.settings.linger_ms:
            # Let light traffic gather into one batch instead of one request each.
            await asyncio.sleep(self.settings.linger_ms / 1000)

    # ------------------------------------------------------------------ send
    async def _linger(self) -> None:
        if not (self._draining or self._stopping):
            await asyncio.sleep(self.settings.linger_ms / 1000)

    async def _send_batch(self, target: Target, batch: list[Claimed]) -> None:
        cancelled = False
        try:
            await self._deliver(target, batch)
        except asyncio.CancelledError:
            cancelled = True  # shutdown: stop() releases the rows still leased
            raise
        except Exception:
            # The rows stay leased and come back when the lease runs out.
            log.exception("could not record delivery results for %s", target.name)
        finally:
            target.in_flight -= 1
            if not cancelled:
                self._leased.difference_update(c.id for c in batch)
            target.wake.set()

    async def _deliver(self, target: Target, batch: list[Claimed]) -> None:
        sent_while_draining = self._draining
        result = await self._post(target, batch)
        verdict = result.verdict
        if verdict is Verdict.SUCCESS:
            await self._delivered(target, batch)
        elif verdict is Verdict.TRANSIENT:
            self._hold(target, result.retry_after)
            # Meta still failing during the shutdown drain: stop trying there.
            target.drain_failed = target.drain_failed or sent_while_draining
            await self._retry(target, batch, result)
        elif verdict is Verdict.CREDENTIALS:
            await self._pause(target, batch, result)
        elif len(batch) == 1:
            await self._dead(target, batch, result)
        else:
            # Meta rejects the whole batch for one bad event: split until the
            # bad ones are alone; the halves go out concurrently. Each step is
            # one more request, so the lease is renewed to cover it.
            await self.outbox.extend_lease(
                [c.id for c in batch], until=self.clock() + self.settings.lease_seconds
            )
            mid = len(batch) // 2
            results = await asyncio.gather(
                self._deliver(target, batch[:mid]),
                self._deliver(target, batch[mid:]),
                return_exceptions=True,
            )
            for outcome in results:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def _post(self, target: Target, batch: list[Claimed]) -> Classified:
        resend = max(c.attempts for c in batch) - 1
        started = time.monotonic()
        with self.telemetry.delivery_span(
            target.name, target.settings.pixel_id, [c.traceparent for c in batch],
            [c.message_id for c in batch], resend,
        ) as span:
            result, status, body = await self._request(target, batch)
            self.telemetry.request_done(span, target.name, batch, status, body, result,
                                        time.monotonic() - started)
        target.sent_requests += 1
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
        self.telemetry.settled(target.name, batch, "delivered")

    async def _retry(self, target: Target, batch: list[Claimed], result: Classified) -> None:
        now = self.clock()
        # A transient failure is the destination's, not the events': the rows
        # wait for the destination's hold (backoff with full jitter, at least
        # Retry-After), all of them, so the backlog goes out again in whole
        # batches once Meta is back instead of trickling out row by row.
        error = result.error.as_dict() if result.error else None
        await self.outbox.mark_retry([c.id for c in batch], now=now,
                                     next_attempt_at=max(target.hold_until, now), error=error)
        self.telemetry.settled(target.name, batch, "retry", result.error)

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
        self.telemetry.settled(target.name, batch, "paused", result.error)

    async def _dead(self, target: Target, batch: list[Claimed], result: Classified) -> None:
        now = self.clock()
        err = result.error
        reason = f"rejected by Meta: {err.message}" if err else "rejected by Meta"
        await self.outbox.mark_dead([c.id for c in batch], now=now, reason=reason,
                                    error=err.as_dict() if err else None)
        self.telemetry.settled(target.name, batch, "dead", err, reason)
        for c in batch:
            log.warning("event %s dead for %s: %s (code %s, subcode %s, fbtrace_id %s)",
                        c.message_id, target.name, err.message if err else "",
                        err and err.code, err and err.subcode, err and err.fbtrace_id)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "pixel_id": t.settings.pixel_id,
                "sandbox": t.settings.sandbox,
                "paused": t.paused_since is not None,
                "paused_since": t.paused_since,
                "pause_error": t.pause_error,
                "requests_sent": t.sent_requests,
                "consecutive_failures": t.failures,
                "held_until": t.hold_until if t.hold_until > self.clock() else None,
            }
            for name, t in self.targets.items()
        }

