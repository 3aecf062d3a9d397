"""The Graph API stand-in for the bench: the product's sandbox in its own process.

It is ``sidecar.sandbox.create_sandbox_app`` unchanged (same validation, same
fault injection through ``POST /_sandbox/faults``), with three differences
that keep the stand-in from being the thing measured: it runs on uvloop, it
keeps few records (validation still runs on every event), and a middleware
notes ``(time, events accepted so far)`` after each accepted request, which
``GET /_bench/timeline?since=N`` returns. Delivery rates are computed from
that timeline, on the receiving side, where "delivered" is decided.

Run: ``python -m bench.graph --port N --token T --pixel P``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import orjson
import uvloop
from aiohttp import web

from bench.procs import serve_until_signal
from sidecar.sandbox import SANDBOX_STATE, create_sandbox_app

MAX_TIMELINE = 2_000_000
TIMELINE: web.AppKey[list[tuple[float, int]]] = web.AppKey("bench_timeline", list)


@web.middleware
async def _note_deliveries(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if response.status == 200 and request.method == "POST" and request.path.endswith("/events"):
        timeline = request.app[TIMELINE]
        if len(timeline) < MAX_TIMELINE:
            timeline.append((time.time(), request.app[SANDBOX_STATE].events_total))
    return response


async def _timeline(request: web.Request) -> web.Response:
    since = int(request.query.get("since", "0"))
    return web.Response(body=orjson.dumps(request.app[TIMELINE][since:]),
                        content_type="application/json")


def create_app(token: str, pixel: str) -> web.Application:
    app = create_sandbox_app(access_token=token, pixel_id=pixel, max_records=1000,
                             max_requests=100)
    app[TIMELINE] = []
    app.middlewares.append(_note_deliveries)
    app.router.add_get("/_bench/timeline", _timeline)
    return app


async def serve(port: int, token: str, pixel: str) -> None:
    runner = web.AppRunner(create_app(token, pixel), access_log=None, shutdown_timeout=1.0)
    await serve_until_signal(runner, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--pixel", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.token, args.pixel))


if __name__ == "__main__":
    main()
