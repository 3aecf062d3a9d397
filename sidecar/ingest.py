"""Ingest: the Segment-compatible HTTP API that accepts events.

Owns the request path up to the durable commit: write-key auth, body limits
(gzip included, with the decompressed size capped), choosing where the body
is parsed, checked and mapped (:mod:`sidecar.messages`, in this process or,
for a large batch, in a mapping worker of :mod:`sidecar.mapping_pool`), the
ingest metrics, and the answer. ``200`` is sent only after the outbox has
committed every accepted message.

Status codes: 200 stored (with ``rejected`` listing refused messages), 400
bad request, unsupported encoding, or every message refused, 401 bad write
key, 413 too large, 503 (+ ``Retry-After``) when the outbox is full,
the disk write failed, or the sidecar is shutting down.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from sidecar.errors import OutboxError, OutboxFull
from sidecar.mapping import Mapper
from sidecar.mapping_pool import MappingPool
from sidecar.messages import SINGLE_TYPES, BadRequest, Limits, Prepared, prepare_body
from sidecar.outbox import Outbox
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

INGEST_PATHS = (*(f"/v1/{kind}" for kind in SINGLE_TYPES), "/v1/batch", "/v1/import")
BATCH_PATHS = frozenset(("/v1/batch", "/v1/import"))
RETRY_AFTER_SECONDS = "5"
# Batch bodies at least this large go to a mapping worker when there is one;
# below it the round trip costs more than the mapping it would move.
WORKER_MIN_BYTES = 8 * 1024


class Ingest:
    """Turns HTTP requests into committed outbox rows."""

    def __init__(
        self,
        outbox: Outbox,
        mappers: Mapping[str, Mapper],
        telemetry: Telemetry,
        limits: Limits,
        *,
        write_key: str | None,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        pool: MappingPool | None = None,
    ) -> None:
        self.outbox = outbox
        self.mappers = mappers
        self.telemetry = telemetry
        self.limits = limits
        self.write_key = write_key
        self.on_commit = on_commit
        self.clock = clock
        self.pool = pool
        self.accepting = True

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = request.path
        started = time.perf_counter()
        with self.telemetry.ingest_span(endpoint, request.headers) as span:
            try:
                response = await self._handle(request, endpoint, span)
            except BadRequest as err:
                response = _error(err.status, err.message)
            span.set_attribute("http.response.status_code", response.status)
        m = self.telemetry.metrics
        if response.status != 200:
            m.requests_refused.labels(str(response.status)).inc()
        m.ingest_latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request, endpoint: str, span: Any) -> web.Response:
        self._authorize(request)
        if not self.accepting:
            return _unavailable("the sidecar is shutting down")
        if self.outbox.over_cap:
            return _unavailable("the outbox is full; retry later")
        body = await read_body(request, self.limits.max_request_bytes)
        now = self.clock()
        traceparent = self.telemetry.traceparent(span, request.headers)
        prepared = None
        if self.pool is not None and len(body) >= WORKER_MIN_BYTES and endpoint in BATCH_PATHS:
            prepared = await self.pool.prepare(endpoint, body, now=now, traceparent=traceparent)
            # "server": no worker free, not started yet, or one failed.
            self.telemetry.metrics.batch_bodies.labels(
                "worker" if prepared is not None else "server").inc()
        if prepared is None:
            prepared = prepare_body(endpoint, body, self.limits, self.mappers, now=now,
                                    traceparent=traceparent)
        self._count(prepared)
        events, rejected = prepared.events, prepared.rejected
        self.telemetry.describe_ingest(span, prepared.message_count, events)
        if not events:
            return web.json_response({"success": False, "error": "every message was rejected",
                                      "rejected": rejected}, status=400)
        try:
            fresh = await self.outbox.add(events)
        except OutboxFull as err:
            return _unavailable(str(err))
        except OutboxError as err:
            log.error("ingest could not store %d messages: %s", len(events), err)
            return _unavailable("the outbox could not store the events; retry later")
        self.telemetry.ingested(events, fresh)
        self.on_commit()
        answer: dict[str, Any] = {"success": True}
        if rejected:
            answer["rejected"] = rejected
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def _authorize(self, request: web.Request) -> None:
        if self.write_key is None:
            return
        header = request.headers.get("Authorization", "")
        supplied = ""
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            supplied = decoded.partition(":")[0]
        if not hmac.compare_digest(supplied.encode(), self.write_key.encode()):
            raise BadRequest(401, "missing or wrong write key (HTTP Basic, write key as user name)")

    def _count(self, prepared: Prepared) -> None:
        # One labelled increment per series and request, not per message: a
        # labels() lookup costs about as much as validating a message.
        m = self.telemetry.metrics
        for label, count in prepared.received.items():
            m.received.labels(label).inc(count)
        for reason, count in prepared.rejected_reasons.items():
            m.rejected.labels(reason).inc(count)
        if prepared.generated_ids:
            m.generated_ids.inc(prepared.generated_ids)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status)


def _unavailable(message: str) -> web.Response:
    response = _error(503, message)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes either way."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"request body of {request.content_length} bytes exceeds {limit}")
    raw = await _read_at_most(request, limit + 1)
    if len(raw) > limit:
        raise BadRequest(413, f"request body exceeds {limit} bytes")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise BadRequest(400, f"unsupported Content-Encoding {encoding!r} (use gzip or none)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as err:
        raise BadRequest(400, f"body is not valid gzip: {err}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise BadRequest(413, f"decompressed body exceeds {limit} bytes")
    return body


async def _read_at_most(request: web.Request, most: int) -> bytes:
    """Up to ``most`` bytes of the body, however many segments it arrives in.

    ``StreamReader.read(n)`` returns only what is buffered so far, which for
    a body sent in several TCP segments is a prefix of it.
    """
    chunks: list[bytes] = []
    size = 0
    while size < most:  # each pass adds at least one byte or ends the body
        chunk = await request.content.read(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if request.content_length is not None and size >= request.content_length:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
