"""The ceiling: a bare aiohttp + uvloop server that reads the body and answers 200.

It runs with the sidecar's own runner options (``RUNNER_OPTIONS``) and
listen backlog, on the same paths, so the only difference from the sidecar
is the work the sidecar does: parse, validate, map, commit durably, answer.

Run: ``python -m bench.ceiling --port N``.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

from bench.procs import serve_until_signal
from sidecar.app import RUNNER_OPTIONS
from sidecar.ingest import INGEST_PATHS

ANSWER = b'{"success":true}'


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return web.Response(body=b"ok")


async def serve(port: int) -> None:
    app = web.Application(client_max_size=4 * 1024 * 1024 + 1024)
    for path in INGEST_PATHS:
        app.router.add_post(path, _accept)
    app.router.add_get("/healthz", _health)
    runner = web.AppRunner(app, shutdown_timeout=1.0, **RUNNER_OPTIONS)
    await serve_until_signal(runner, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
