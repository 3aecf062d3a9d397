"""Experiments: ``capi-sidecar serve`` with a candidate change patched in at start-up.

The bench measures a proposed change to a module it does not own by running
the real sidecar with the change applied in memory, so a recommendation comes
with a measured figure (``python -m bench --experiment NAME``). Nothing here
is used by the product.

- ``ingest-full-only``: only the ingest commit (``Outbox._insert``) runs with
  ``synchronous=FULL``; the drainer's claims and marks and housekeeping run
  with ``NORMAL``, which in WAL mode skips their fsync. Safe under
  at-least-once: a lost claim or delivered-mark after power loss means the
  event is sent again with the same event_id, and the next FULL commit
  flushes every earlier one with it (the WAL is sequential).

- ``index-stats``: the housekeeping/metrics ``stats`` query counts pending
  rows from the ``deliveries_due`` partial index and finds the oldest pending
  event by ``MIN(event_id)`` there plus one primary-key lookup, instead of a
  full scan of ``deliveries`` (payloads included) and a join over every
  pending row (final-state counts from ``deliveries_final``; single
  destination only, enough to measure the cost).

- ``cache-64m`` / ``mmap-256m``: each connection with a 64 MiB page cache
  (SQLite's default is 2 MiB) / 256 MiB of memory-mapped I/O.

- ``autocheckpoint``: the writer checkpoints the WAL itself every 4,000
  pages (~16 MiB) instead of leaving it to housekeeping every 5 s, so the
  WAL cannot grow without bound under a continuous drain.

- ``expire-by-age``: the drainer's once-a-second expiry sweep for one
  destination runs the sweep's query without ``AND destination = ?``, so
  SQLite searches the ``deliveries_age`` index (``event_time < ?``) instead
  of walking every pending row of the destination through ``deliveries_due``
  (same result with one destination; the product fix is ``AND +destination
  = ?`` or ``INDEXED BY deliveries_age``).

Run: ``python -m bench.patched NAME[,NAME...]`` with the sidecar's ``CAPI_*`` environment.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _ingest_full_only() -> None:
    from sidecar.outbox import Outbox

    original: Callable[..., Any] = Outbox._insert

    def insert(self: Outbox, groups: list[Sequence[Any]]) -> Any:
        con: sqlite3.Connection | None = self._wcon
        assert con is not None
        con.execute("PRAGMA synchronous=FULL")
        try:
            return original(self, groups)
        finally:
            con.execute("PRAGMA synchronous=NORMAL")

    Outbox._insert = insert  # type: ignore[method-assign]
    os.environ["CAPI_SYNCHRONOUS"] = "NORMAL"


def _index_stats() -> None:
    import sidecar.outbox_queries as queries

    def stats(con: sqlite3.Connection, *, now: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for dest, count, first in con.execute(
            "SELECT destination, COUNT(*), MIN(event_id) FROM deliveries "
            "INDEXED BY deliveries_due WHERE state = 'pending' GROUP BY destination"
        ):
            row = con.execute("SELECT received_at FROM events WHERE id = ?", (first,)).fetchone()
            out[dest] = {"pending": count, "delivered": 0, "skipped": 0, "dead": 0,
                         "oldest_pending_age_seconds": max(0.0, now - row[0]) if row else 0.0}
        finals = dict(con.execute(
            "SELECT state, COUNT(*) FROM deliveries INDEXED BY deliveries_final "
            "WHERE state != 'pending' GROUP BY state"
        ).fetchall())
        if len(out) == 1:  # the experiment runs with one destination
            next(iter(out.values())).update(finals)
        return out

    queries.stats = stats


def _page_cache(pragmas: tuple[str, ...]) -> Callable[[], None]:
    def patch() -> None:
        import sidecar.database as database

        original: Callable[..., sqlite3.Connection] = database.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            con = original(*args, **kwargs)
            for pragma in pragmas:
                con.execute(f"PRAGMA {pragma}")
            return con

        database.connect = connect

    return patch


def _autocheckpoint() -> None:
    import sidecar.database as database

    original: Callable[..., sqlite3.Connection] = database.open_writer

    def open_writer(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        con = original(*args, **kwargs)
        con.execute("PRAGMA wal_autocheckpoint=4000")
        return con

    database.open_writer = open_writer


def _expire_by_age() -> None:
    from sidecar.outbox import Outbox

    original: Callable[..., Any] = Outbox.expire_due

    async def expire_due(self: Outbox, destination: str | None, now: float,
                         oldest_event_time: float) -> Any:
        expired = await original(self, None, now, oldest_event_time)
        return [e for e in expired if destination is None or e.destination == destination]

    Outbox.expire_due = expire_due  # type: ignore[method-assign]


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "expire-by-age": _expire_by_age,
    "autocheckpoint": _autocheckpoint,
    "cache-64m": _page_cache(("cache_size=-65536",)),
    "mmap-256m": _page_cache(("mmap_size=268435456",)),
    "ingest-full-only": _ingest_full_only,
    "index-stats": _index_stats,
}


def main(argv: list[str]) -> int:
    names = argv[0].split(",") if argv else []
    if not names or not set(names) <= EXPERIMENTS.keys():
        print(f"usage: python -m bench.patched NAME[,NAME...] ({', '.join(EXPERIMENTS)})",
              file=sys.stderr)
        return 2
    for name in names:
        EXPERIMENTS[name]()
    from sidecar.cli import main as sidecar_main

    return sidecar_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
