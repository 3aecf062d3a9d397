"""Experiments: ``capi-sidecar serve`` with a candidate change patched in at start-up.

The bench measures a proposed change to a module it does not own by running
the real sidecar with the change applied in memory, so a recommendation comes
with a measured figure (``python -m bench --experiment NAME``). Nothing here
is used by the product.

- ``cache-64m`` / ``mmap-256m``: each connection with a 64 MiB page cache
  (SQLite's default is 2 MiB) / 256 MiB of memory-mapped I/O.
- ``switch-1ms`` / ``switch-200us``: the server's GIL switch interval
  (``sys.setswitchinterval``; Python's default is 5 ms). Measured: no change
  (docs/performance.md).

Earlier experiments (ingest-only fsync, index-only stats, a bounded WAL,
the expiry sweep on the age index) measured well and are now in the
product: see docs/performance.md.

Run: ``python -m bench.patched NAME[,NAME...]`` with the sidecar's ``CAPI_*`` environment.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from typing import Any


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


def _switch_interval(seconds: float) -> Callable[[], None]:
    def patch() -> None:
        sys.setswitchinterval(seconds)

    return patch


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "switch-1ms": _switch_interval(0.001),
    "switch-200us": _switch_interval(0.0002),
    "cache-64m": _page_cache(("cache_size=-65536",)),
    "mmap-256m": _page_cache(("mmap_size=268435456",)),
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
