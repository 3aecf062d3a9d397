"""The command line: ``capi-sidecar [serve|migrate|status|event|dead-letters|test-event|sandbox]``.

The only module that reads the environment (through ``config.load_settings``)
and configures logging. Every verb exits 0 on success, 1 when what it was
asked about failed, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import Settings, load_settings, parse_address, unknown_environment
from sidecar.errors import ConfigError, OutboxCorrupt, SidecarError

log = logging.getLogger("sidecar")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="capi-sidecar",
        description="Durable edge sidecar forwarding Segment-style events to Meta's "
        "Conversions API.",
    )
    p.add_argument("--config", help="YAML configuration file (default: $CAPI_CONFIG)")
    p.add_argument("--version", action="version", version=f"capi-sidecar {__version__}")
    sub = p.add_subparsers(dest="verb")
    sub.add_parser("serve", help="run the sidecar (default)")
    sub.add_parser("migrate", help="create or upgrade the outbox database, then exit")
    sub.add_parser("status", help="print the running sidecar's status (JSON)")
    ev = sub.add_parser("event", help="print one event's delivery status")
    ev.add_argument("message_id")
    dl = sub.add_parser("dead-letters", help="list, retry or purge dead letters")
    dl.add_argument("action", choices=["list", "retry", "purge"])
    dl.add_argument("--destination", help="only this destination")
    dl.add_argument("--message-id", action="append", dest="message_ids",
                    help="only this event (repeatable)")
    dl.add_argument("--limit", type=int, default=100, help="rows to list (default 100)")
    te = sub.add_parser("test-event", help="send one test event and print Meta's answer")
    te.add_argument("--code", help="test_event_code (default: the configured one)")
    te.add_argument("--destination", help="only this destination")
    sb = sub.add_parser("sandbox", help="run the local Graph API stand-in")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8791)
    sb.add_argument("--access-token", default=None,
                    help="token the sandbox accepts (default: any non-empty token)")
    return p


def _setup_logging(settings: Settings | None) -> None:
    level = settings.log_level if settings else "INFO"
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if settings is not None and settings.log_format == "json":
        fmt = ('{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
               '"message":"%(message)s"}')
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verb = args.verb or "serve"
    if verb == "sandbox":
        _setup_logging(None)
        from sidecar.sandbox import run_sandbox

        run_sandbox(args.host, args.port, args.access_token)
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        for line in err.problems:
            print(f"capi-sidecar: configuration error: {line}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    for name in unknown_environment(os.environ):
        log.warning("ignoring %s: no setting has that name (typo?)", name)
    handler = VERBS[verb]
    try:
        return _run(handler(settings, args))
    except OutboxCorrupt as err:
        print(f"capi-sidecar: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        for line in err.problems:
            print(f"capi-sidecar: configuration error: {line}", file=sys.stderr)
        return 2
    except SidecarError as err:
        print(f"capi-sidecar: {err}", file=sys.stderr)
        return 1


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.app import serve
    from sidecar.telemetry import tracer_provider_from_env

    await serve(settings, tracer_provider=tracer_provider_from_env())
    return 0


@contextlib.asynccontextmanager
async def _open_outbox(settings: Settings, *, create: bool = False) -> AsyncIterator[Any]:
    """The outbox for an operator's verb, without releasing the server's leases.

    Only ``migrate`` creates the file: a mistyped CAPI_DB_PATH must not
    silently answer from a new, empty outbox.
    """
    from sidecar.outbox import Outbox

    if not create and not settings.db_path.exists():
        raise SidecarError(
            f"no outbox database at {settings.db_path} (set CAPI_DB_PATH to the sidecar's)"
        )
    outbox = Outbox(settings.db_path, cap=settings.outbox_cap, synchronous=settings.synchronous,
                    resume_leases=False)
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with _open_outbox(settings, create=True):
        pass
    print(f"outbox {settings.db_path} is up to date")
    return 0


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp

    host, port = parse_address(settings.ops_listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{host}:{port}/v1/status"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            doc = await resp.json()
    except aiohttp.ClientError as err:
        print(f"capi-sidecar: no sidecar answers at {url} ({type(err).__name__})",
              file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2))
    return 0


async def _event(settings: Settings, args: argparse.Namespace) -> int:
    async with _open_outbox(settings) as outbox:
        found = await outbox.event_status(args.message_id)
    if found is None:
        print(f"capi-sidecar: no event with messageId {args.message_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


async def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    async with _open_outbox(settings) as outbox:
        if args.action == "list":
            rows = await outbox.dead_letters(destination=args.destination, limit=args.limit)
            print(json.dumps(rows, indent=2))
        elif args.action == "retry":
            n = await outbox.retry_dead(destination=args.destination,
                                        message_ids=args.message_ids, now=time.time())
            print(f"{n} dead letters queued for another delivery")
        else:
            n = await outbox.purge_dead(destination=args.destination,
                                        message_ids=args.message_ids)
            print(f"{n} dead letters purged")
    return 0


async def _test_event(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp
    import orjson

    from sidecar.delivery import Target
    from sidecar.mapping import Mapped, Mapper

    destinations = settings.resolved_destinations()
    if not destinations:
        print("capi-sidecar: no destination configured (set CAPI_PIXEL_ID and "
              "CAPI_ACCESS_TOKEN)", file=sys.stderr)
        return 2
    failed = False
    now = time.time()
    message = {"type": "page", "messageId": f"capi-sidecar-test-{uuid.uuid4()}",
               "anonymousId": "capi-sidecar-test", "properties": {"url": "https://example.com/"},
               "context": {"ip": "127.0.0.1", "userAgent": f"capi-sidecar/{__version__}"}}
    async with aiohttp.ClientSession() as session:
        for dest in destinations:
            if args.destination and dest.name != args.destination:
                continue
            code = args.code or dest.test_event_code
            if not code:
                print(f"{dest.name}: no test_event_code (use --code or CAPI_TEST_EVENT_CODE)",
                      file=sys.stderr)
                failed = True
                continue
            target = Target.build(dest.model_copy(update={"test_event_code": code}))
            outcome = Mapper(target.settings).map(message, received_at=now, now=now)
            assert isinstance(outcome, Mapped)
            try:
                async with session.post(
                    target.url,
                    data=target.body([orjson.dumps(outcome.payload)]),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    answer = await resp.text()
            except aiohttp.ClientError as err:
                # The URL holds no token (the token travels in the body only).
                print(f"{dest.name}: no answer from {target.url} ({type(err).__name__})",
                      file=sys.stderr)
                failed = True
                continue
            print(f"{dest.name}: HTTP {resp.status} {answer}")
            failed = failed or resp.status >= 300
    return 1 if failed else 0


VERBS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "serve": _serve,
    "migrate": _migrate,
    "status": _status,
    "event": _event,
    "dead-letters": _dead_letters,
    "test-event": _test_event,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
