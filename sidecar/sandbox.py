"""The sandbox: a local stand-in for Meta's Graph API Conversions endpoint (SPEC §7).

Owns a real aiohttp app that answers ``POST /{version}/{pixel_id}/events`` the way
Meta does: JSON or form-encoded bodies, the access token (body, ``Authorization:
Bearer`` or URL query), ``appsecret_proof``, the pixel id, and strict validation of
every event, where one bad event fails the whole request with HTTP 400, code 100
and a subcode; it records what it received and accepted. It also owns the
``/_sandbox/*`` control API (faults, records, health) and the two ways to run it:
:func:`start_sandbox` inside a running loop, :func:`run_sandbox` as a blocking
command. The checks themselves, their tables and the subcodes they answer with live
in :mod:`sidecar.sandbox_validation` (this module only runs them in Meta's order);
fault injection lives in :mod:`sidecar.sandbox_faults`.

The token is never logged: the access log shows the path without the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from sidecar.sandbox_faults import SUBCODE_INVALID_EVENT as SUBCODE_INVALID_EVENT
from sidecar.sandbox_faults import (
    Fault,
    FaultQueue,
    Firing,
    GraphError,
    new_fbtrace_id,
)
from sidecar.sandbox_validation import ACTION_SOURCES as ACTION_SOURCES
from sidecar.sandbox_validation import HASHED_FIELDS as HASHED_FIELDS
from sidecar.sandbox_validation import MAX_EVENT_AGE_SECONDS as MAX_EVENT_AGE_SECONDS
from sidecar.sandbox_validation import MAX_EVENT_NAME_LENGTH as MAX_EVENT_NAME_LENGTH
from sidecar.sandbox_validation import MAX_EVENTS_PER_REQUEST as MAX_EVENTS_PER_REQUEST
from sidecar.sandbox_validation import MAX_FUTURE_SKEW_SECONDS as MAX_FUTURE_SKEW_SECONDS
from sidecar.sandbox_validation import SUBCODE_IN_FUTURE as SUBCODE_IN_FUTURE
from sidecar.sandbox_validation import SUBCODE_NO_CUSTOMER_INFO as SUBCODE_NO_CUSTOMER_INFO
from sidecar.sandbox_validation import SUBCODE_TOO_OLD as SUBCODE_TOO_OLD
from sidecar.sandbox_validation import SUBCODE_UNSUPPORTED_POST as SUBCODE_UNSUPPORTED_POST
from sidecar.sandbox_validation import (
    check_batch,
    check_pixel,
    check_proof,
    check_token,
    check_version,
    is_graph_version,
)

# The ``X as X`` imports re-export names that used to be defined or imported here.
__all__ = [
    "SANDBOX_STATE",
    "Fault",
    "RecordedRequest",
    "SandboxState",
    "create_sandbox_app",
    "run_sandbox",
    "start_sandbox",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


@dataclass
class RecordedRequest:
    """One ``POST .../events`` the sandbox received, as answered."""

    version: str
    pixel_id: str
    status: int  # 0: the connection was dropped by a fault
    body: dict[str, Any]  # parsed (``data`` decoded), without the access_token
    token_in_url: bool
    token_source: str | None  # "body", "header", "query" or None
    body_format: str  # "json", "form" or "empty"
    headers: dict[str, str]  # without Authorization
    fbtrace_id: str
    error: dict[str, Any] | None
    faulted: bool
    received_at: float

    @property
    def events(self) -> list[Any]:
        data = self.body.get("data")
        return data if isinstance(data, list) else []

    @property
    def event_ids(self) -> list[Any]:
        return [e.get("event_id") for e in self.events if isinstance(e, dict)]

    @property
    def test_event_code(self) -> Any:
        return self.body.get("test_event_code")

    @property
    def partner_agent(self) -> Any:
        return self.body.get("partner_agent")

    def summary(self) -> dict[str, Any]:
        """What ``GET /_sandbox/requests`` shows for this request."""
        return {
            "status": self.status,
            "event_count": len(self.events),
            "event_ids": self.event_ids,
            "version": self.version,
            "pixel_id": self.pixel_id,
            "token_in_url": self.token_in_url,
            "token_source": self.token_source,
            "test_event_code": self.test_event_code,
            "partner_agent": self.partner_agent,
            "body_format": self.body_format,
            "fbtrace_id": self.fbtrace_id,
            "error": self.error,
            "faulted": self.faulted,
            "received_at": self.received_at,
        }


class SandboxState:
    """What the sandbox checks against, what it recorded, and the faults waiting to fire.

    ``access_token``/``pixel_id``/``app_secret`` may be changed while running (say,
    to fix a credential mid-test). Records are bounded: at most ``max_records``
    accepted events (oldest dropped first; ``events_total`` keeps counting), and
    requests while they number at most ``max_requests`` and hold at most
    ``max_records`` events (the newest is always kept).
    """

    def __init__(
        self,
        *,
        access_token: str | None = None,
        pixel_id: str | None = None,
        app_secret: str | None = None,
        max_records: int = 100_000,
        max_requests: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_records < 1 or max_requests < 1:
            raise ValueError("max_records and max_requests must be at least 1")
        self.access_token = access_token
        self.pixel_id = pixel_id
        self.app_secret = app_secret
        self.max_records = max_records
        self.max_requests = max_requests
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        self.events: list[dict[str, Any]] = []
        self.events_total = 0
        self.requests_total = 0
        self.faults = FaultQueue()
        self._request_events = 0
        self._closing = asyncio.Event()

    def inject(self, fault: Fault) -> None:
        self.faults.inject(fault)

    def clear(self) -> None:
        """Forget every fault and every record."""
        self.clear_faults()
        self.clear_records()

    def clear_faults(self) -> None:
        self.faults.clear()

    def clear_records(self) -> None:
        self.requests.clear()
        self.events.clear()
        self.events_total = self.requests_total = self._request_events = 0

    def events_with_id(self, event_id: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event_id") == event_id]

    def record_accepted(self, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)
        self.events_total += len(events)
        excess = len(self.events) - self.max_records
        if excess > 0:
            del self.events[:excess]

    def record_request(self, record: RecordedRequest) -> None:
        self.requests.append(record)
        self.requests_total += 1
        self._request_events += len(record.events)
        cut = max(len(self.requests) - self.max_requests, 0)
        held = self._request_events - sum(len(r.events) for r in self.requests[:cut])
        while held > self.max_records and cut < len(self.requests) - 1:
            held -= len(self.requests[cut].events)
            cut += 1
        if cut:
            del self.requests[:cut]
            self._request_events = held

    async def sleep(self, seconds: float) -> None:
        """Injected latency; cut short when the server shuts down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def release_delays(self) -> None:
        self._closing.set()


SANDBOX_STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)


# ---------------------------------------------------------------- reading a request


@dataclass
class _Call:
    version: str
    pixel_id: str
    params: dict[str, Any]
    token: str | None
    token_source: str | None
    token_in_url: bool
    body_format: str
    headers: dict[str, str]
    events: list[Any]
    body_problem: GraphError | None
    data_problem: GraphError | None
    received_at: float


async def _read_call(request: web.Request) -> _Call:
    params, body_format, body_problem = await _read_body(request)
    body_token = params.pop("access_token", None)
    for key, value in request.query.items():
        if key != "access_token":
            params.setdefault(key, value)
    token, source = _pick_token(body_token, request)
    events, data_problem = _decode_data(params)
    return _Call(
        version=request.match_info["version"],
        pixel_id=request.match_info["pixel_id"],
        params=params,
        token=token,
        token_source=source,
        token_in_url="access_token" in request.query,
        body_format=body_format,
        headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
        events=events,
        body_problem=body_problem,
        data_problem=data_problem,
        received_at=time.time(),
    )


async def _read_body(request: web.Request) -> tuple[dict[str, Any], str, GraphError | None]:
    if request.content_type in _FORM_TYPES:
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}, "form", None
    raw = await request.read()
    if not raw.strip():
        return {}, "empty", None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}, "json", GraphError("(#100) The request body is not valid JSON")
    if not isinstance(body, dict):
        return {}, "json", GraphError("(#100) The request body must be a JSON object")
    return body, "json", None


def _pick_token(body_token: object, request: web.Request) -> tuple[str | None, str | None]:
    if isinstance(body_token, str) and body_token:
        return body_token, "body"
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "oauth") and credentials.strip():
        return credentials.strip(), "header"
    query_token = request.query.get("access_token")
    if query_token:
        return query_token, "query"
    return None, None


def _decode_data(params: dict[str, Any]) -> tuple[list[Any], GraphError | None]:
    """``data`` as a list; form bodies carry a JSON string, and the official Python
    SDK also encodes each event as its own JSON string."""
    data = params.get("data")
    if data is None:
        return [], None
    try:
        if isinstance(data, str | bytes):
            data = orjson.loads(data)
        if isinstance(data, list) and any(isinstance(e, str) for e in data):
            data = [orjson.loads(e) if isinstance(e, str) else e for e in data]
    except orjson.JSONDecodeError:
        return [], GraphError("(#100) param data must be an array of JSON objects.")
    if not isinstance(data, list):
        return [], GraphError("(#100) param data must be an array.")
    params["data"] = data
    return data, None


def _check_call(call: _Call, state: SandboxState) -> list[dict[str, Any]]:
    """The accepted events, or ``GraphError`` for the first problem, checked in Meta's order."""
    if call.body_problem is not None:
        raise call.body_problem
    check_version(call.version, call.pixel_id)
    check_token(call.token, state.access_token)
    check_proof(call.params, call.token, state.app_secret)
    check_pixel(call.pixel_id, state.pixel_id)
    if call.data_problem is not None:
        raise call.data_problem
    return check_batch(call.params, call.events, state.clock)


# ---------------------------------------------------------------- answering


async def _post_events(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    call = await _read_call(request)
    firing = state.faults.take(call.events) if len(state.faults) else None
    if firing is not None:
        answered = await _fire(request, state, call, firing)
        if answered is not None:
            return answered
    try:
        events = _check_call(call, state)
    except GraphError as err:
        return _error_response(state, call, err, faulted=False)
    state.record_accepted(events)
    fbtrace_id = new_fbtrace_id()
    _record(state, call, 200, fbtrace_id, None, faulted=False)
    logger.debug("sandbox accepted %d event(s) for pixel %s", len(events), call.pixel_id)
    payload = {"events_received": len(events), "messages": [], "fbtrace_id": fbtrace_id}
    return _json(payload, headers=_graph_headers(call, fbtrace_id))


async def _fire(
    request: web.Request, state: SandboxState, call: _Call, firing: Firing
) -> web.StreamResponse | None:
    if firing.fault.delay_seconds:
        await state.sleep(firing.fault.delay_seconds)
    if firing.fault.drop_connection:
        _record(state, call, 0, "", None, faulted=True)
        logger.info("sandbox dropped the connection (injected fault)")
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never sent: the socket is closed
    error = firing.answer()
    if error is None:
        return None
    return _error_response(state, call, error, faulted=True)


def _error_response(
    state: SandboxState, call: _Call, err: GraphError, *, faulted: bool
) -> web.Response:
    fbtrace_id = new_fbtrace_id()
    envelope = err.envelope(fbtrace_id)
    _record(state, call, err.status, fbtrace_id, envelope["error"], faulted=faulted)
    logger.info(
        "sandbox answered HTTP %d, code %s, subcode %s%s: %s",
        err.status,
        err.code,
        err.subcode,
        " (injected fault)" if faulted else "",
        err.message,
    )
    headers = _graph_headers(call, fbtrace_id)
    if err.retry_after is not None:
        headers["Retry-After"] = err.retry_after
    if err.code == 190:
        headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{err.message}"'
    if err.raw_body is not None:
        is_html = err.raw_body.lstrip().startswith("<")
        return web.Response(
            status=err.status,
            text=err.raw_body,
            headers=headers,
            content_type="text/html" if is_html else "text/plain",
        )
    return _json(envelope, status=err.status, headers=headers)


def _graph_headers(call: _Call, fbtrace_id: str) -> dict[str, str]:
    headers = {"x-fb-trace-id": fbtrace_id}
    if is_graph_version(call.version):
        headers["facebook-api-version"] = call.version
    return headers


def _record(
    state: SandboxState,
    call: _Call,
    status: int,
    fbtrace_id: str,
    error: dict[str, Any] | None,
    *,
    faulted: bool,
) -> None:
    state.record_request(
        RecordedRequest(
            version=call.version,
            pixel_id=call.pixel_id,
            status=status,
            body=call.params,
            token_in_url=call.token_in_url,
            token_source=call.token_source,
            body_format=call.body_format,
            headers=call.headers,
            fbtrace_id=fbtrace_id,
            error=error,
            faulted=faulted,
            received_at=call.received_at,
        )
    )


def _json(
    payload: Any,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


# ---------------------------------------------------------------- control API


async def _health(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    return _json(
        {
            "status": "ok",
            "events_total": state.events_total,
            "events_recorded": len(state.events),
            "requests_total": state.requests_total,
            "faults_pending": len(state.faults),
        }
    )


async def _list_events(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    event_id = request.query.get("event_id")
    return _json(state.events if event_id is None else state.events_with_id(event_id))


async def _list_requests(request: web.Request) -> web.Response:
    return _json([record.summary() for record in request.app[SANDBOX_STATE].requests])


async def _clear_records(request: web.Request) -> web.Response:
    request.app[SANDBOX_STATE].clear_records()
    return _json({"cleared": "records"})


async def _list_faults(request: web.Request) -> web.Response:
    return _json(request.app[SANDBOX_STATE].faults.pending())


async def _add_faults(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    try:
        payload = orjson.loads(await request.read())
        items = payload if isinstance(payload, list) else [payload]
        faults = [Fault.from_json(item) for item in items]
    except (orjson.JSONDecodeError, ValueError) as err:
        return _json({"error": str(err)}, status=400)
    state.faults.inject_all(faults)
    return _json(
        {"faults_pending": len(state.faults), "faults": state.faults.pending()}, status=201
    )


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[SANDBOX_STATE].clear_faults()
    return _json({"cleared": "faults"})


# ---------------------------------------------------------------- running it


class _AccessLogger(AbstractAccessLogger):
    """Logs the path without its query string, which may hold an access token."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


def create_sandbox_app(
    *,
    access_token: str | None = None,
    pixel_id: str | None = None,
    app_secret: str | None = None,
    max_records: int = 100_000,
    max_requests: int = 10_000,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The sandbox app; ``access_token``/``pixel_id`` ``None`` accept any token or pixel."""
    state = SandboxState(
        access_token=access_token,
        pixel_id=pixel_id,
        app_secret=app_secret,
        max_records=max_records,
        max_requests=max_requests,
        clock=clock,
    )
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SANDBOX_STATE] = state
    app.router.add_post("/{version}/{pixel_id}/events", _post_events)
    app.router.add_get("/_sandbox/health", _health)
    app.router.add_get("/_sandbox/events", _list_events)
    app.router.add_get("/_sandbox/requests", _list_requests)
    app.router.add_delete("/_sandbox/records", _clear_records)
    app.router.add_get("/_sandbox/faults", _list_faults)
    app.router.add_post("/_sandbox/faults", _add_faults)
    app.router.add_delete("/_sandbox/faults", _clear_faults)
    app.on_shutdown.append(_release_delays)
    return app


async def _release_delays(app: web.Application) -> None:
    app[SANDBOX_STATE].release_delays()


async def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    access_token: str | None = None,
    pixel_id: str | None = None,
    app_secret: str | None = None,
    max_records: int = 100_000,
    max_requests: int = 10_000,
    clock: Callable[[], float] = time.time,
) -> tuple[web.AppRunner, str, SandboxState]:
    """Serve the sandbox in the running loop; returns the runner (call ``cleanup()``),
    the base URL (``http://127.0.0.1:54321``) and the state."""
    app = create_sandbox_app(
        access_token=access_token,
        pixel_id=pixel_id,
        app_secret=app_secret,
        max_records=max_records,
        max_requests=max_requests,
        clock=clock,
    )
    runner = web.AppRunner(app, access_log_class=_AccessLogger, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return runner, f"http://{_url_host(host)}:{bound_port}", app[SANDBOX_STATE]


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def run_sandbox(
    host: str,
    port: int,
    access_token: str | None,
    *,
    pixel_id: str | None = None,
    app_secret: str | None = None,
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM (``capi-sidecar sandbox --port N``)."""
    asyncio.run(_serve_until_stopped(host, port, access_token, pixel_id, app_secret))


async def _serve_until_stopped(
    host: str, port: int, access_token: str | None, pixel_id: str | None, app_secret: str | None
) -> None:
    runner, url, _ = await start_sandbox(
        host, port, access_token=access_token, pixel_id=pixel_id, app_secret=app_secret
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    logger.info(
        "Graph API sandbox listening on %s (token: %s, pixel: %s); control API at %s/_sandbox/",
        url,
        "checked" if access_token else "any non-empty",
        pixel_id or "any",
        url,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        logger.info("Graph API sandbox stopped")
