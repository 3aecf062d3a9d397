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

Run: ``python -m bench.patched EXPERIMENT`` with the sidecar's ``CAPI_*`` environment.
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


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "ingest-full-only": _ingest_full_only,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXPERIMENTS:
        print(f"usage: python -m bench.patched {{{','.join(EXPERIMENTS)}}}", file=sys.stderr)
        return 2
    EXPERIMENTS[argv[0]]()
    from sidecar.cli import main as sidecar_main

    return sidecar_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
