"""The outbox's read-only queries, for status pages, metrics, the CLI and the drainer.

Owns the dead-letter listing, one event's status per destination, the
per-destination counts and oldest pending age, and when a destination's next
row is due. Plain functions over a ``sqlite3`` connection that never write:
``Outbox`` runs them on its reader thread (a ``query_only`` connection), so
they proceed beside the writer under WAL.

Each query is written for an index (docs/outbox.md, Schema): none of them
reads the whole ``deliveries`` table, whose rows carry the payloads. Final
rows are found through the partial index ``deliveries_final``, which SQLite
uses only when the query repeats its ``state != 'pending'`` word for word.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from sidecar.database import FINAL_STATES

_DEAD_LETTER_KEYS = ("message_id", "destination", "event_name", "reason", "last_error",
                     "attempts", "dead_at")


def dead_letters(con: sqlite3.Connection, *, destination: str | None,
                 limit: int) -> list[dict[str, Any]]:
    """Dead deliveries, the longest dead first (all, or one destination's)."""
    sql = ("SELECT e.message_id, d.destination, e.event_name, d.reason, d.last_error, "
           "d.attempts, d.updated_at FROM deliveries d JOIN events e ON e.id = d.event_id "
           "WHERE d.state != 'pending' AND d.state = 'dead'")
    args: list[Any] = []
    if destination:
        sql += " AND d.destination = ?"
        args.append(destination)
    sql += " ORDER BY d.updated_at LIMIT ?"
    args.append(limit)
    out = []
    for row in con.execute(sql, args):
        item = dict(zip(_DEAD_LETTER_KEYS, row, strict=True))
        item["last_error"] = orjson.loads(row[4]) if row[4] else None
        out.append(item)
    return out


def event_status(con: sqlite3.Connection, message_id: str) -> dict[str, Any] | None:
    """One message and the state of each of its deliveries (``None``: never stored)."""
    ev = con.execute(
        "SELECT id, type, event_name, received_at, event_time, traceparent "
        "FROM events WHERE message_id = ?", (message_id,)
    ).fetchone()
    if ev is None:
        return None
    dests = {}
    for name, state, attempts, nxt, leased, reason, err, upd in con.execute(
        "SELECT destination, state, attempts, next_attempt_at, leased, reason, "
        "last_error, updated_at FROM deliveries WHERE event_id = ?", (ev[0],)
    ):
        dests[name] = {
            "state": state, "attempts": attempts,
            "next_attempt_at": nxt if state == "pending" else None,
            "in_flight": bool(leased), "reason": reason,
            "last_error": orjson.loads(err) if err else None, "updated_at": upd,
        }
    return {
        "message_id": message_id, "type": ev[1], "event_name": ev[2],
        "received_at": ev[3], "event_time": ev[4], "traceparent": ev[5],
        "destinations": dests,
    }


def stats(con: sqlite3.Connection, *, now: float,
          final_states: bool = True) -> dict[str, dict[str, Any]]:
    """Per destination: rows per state and the age of the oldest pending event.

    Pending rows are counted from ``deliveries_due`` and final ones from
    ``deliveries_final``, one pass over each index and no table row read
    (the drainer's payloads stay on disk). The oldest pending event is the
    one stored first: ``MIN(id)`` from the same pass, then one primary-key
    lookup for its ``received_at``. Rows are stored in the order they were
    received, so that is the oldest received up to a clock step or the
    milliseconds a group commit spans. ``final_states=False`` skips the
    final counts (and destinations with nothing pending).
    """
    out: dict[str, dict[str, Any]] = {}
    # One read transaction: the counts and the lookups see the same snapshot.
    con.execute("BEGIN")
    try:
        pending = con.execute(
            "SELECT destination, COUNT(*), MIN(id) FROM deliveries "
            "WHERE state = 'pending' GROUP BY destination"
        ).fetchall()
        for dest, count, first in pending:
            row = con.execute(
                "SELECT e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id "
                "WHERE d.id = ?", (first,)
            ).fetchone()
            entry = out[dest] = _entry(final_states)
            entry["pending"] = count
            entry["oldest_pending_age_seconds"] = max(0.0, now - row[0]) if row else 0.0
        if final_states:
            for state, dest, count in con.execute(
                "SELECT state, destination, COUNT(*) FROM deliveries "
                "WHERE state != 'pending' GROUP BY state, destination"
            ):
                out.setdefault(dest, _entry(True))[state] = count
    finally:
        con.execute("COMMIT")
    return out


def _entry(final_states: bool) -> dict[str, Any]:
    if not final_states:
        return {"pending": 0, "oldest_pending_age_seconds": 0.0}
    return {**{s: 0 for s in ("pending", *FINAL_STATES)}, "oldest_pending_age_seconds": 0.0}


def final_destinations(con: sqlite3.Connection, state: str) -> list[str]:
    """Destinations that hold rows in the final ``state``: one index seek each.

    A skip-scan of ``deliveries_final`` (state, destination, updated_at):
    the next destination is the smallest one above the last found. ``state``
    is one of ``FINAL_STATES`` and is written into the SQL as a literal so
    that the partial index applies. The retention purge runs it inside its
    write transaction, on the writer's connection.
    """
    if state not in FINAL_STATES:
        raise ValueError(f"not a final state: {state!r}")
    first = ("SELECT MIN(destination) FROM deliveries "  # noqa: S608 - a FINAL_STATES literal
             f"WHERE state != 'pending' AND state = '{state}'")
    found: list[str] = []
    row = con.execute(first).fetchone()
    while row[0] is not None:
        found.append(row[0])
        row = con.execute(first + " AND destination > ?", (row[0],)).fetchone()
    return found


def next_due(con: sqlite3.Connection, destination: str, *,
             oldest_event_time: float) -> float | None:
    """When the destination's next claimable row is due (``None``: nothing pending)."""
    row = con.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination = ? "
        "AND state = 'pending' AND event_time >= ?",
        (destination, oldest_event_time),
    ).fetchone()
    return None if row[0] is None else float(row[0])
