"""The outbox's read-only queries, for status pages, metrics, the CLI and the drainer.

Owns the dead-letter listing, one event's status per destination, the
per-destination counts and oldest pending age, and when a destination's next
row is due. Plain functions over a ``sqlite3`` connection that never write:
``Outbox`` runs them on its reader thread (a ``query_only`` connection), so
they proceed beside the writer under WAL.
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
           "WHERE d.state = 'dead'")
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


def stats(con: sqlite3.Connection, *, now: float) -> dict[str, dict[str, Any]]:
    """Per destination: rows per state and the age of the oldest pending event."""
    out: dict[str, dict[str, Any]] = {}
    for dest, state, count in con.execute(
        "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"
    ):
        entry = out.setdefault(dest, {s: 0 for s in ("pending", *FINAL_STATES)})
        entry[state] = count
    for dest, received in con.execute(
        "SELECT d.destination, MIN(e.received_at) FROM deliveries d "
        "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' "
        "GROUP BY d.destination"
    ):
        out[dest]["oldest_pending_age_seconds"] = max(0.0, now - received)
    for entry in out.values():
        entry.setdefault("oldest_pending_age_seconds", 0.0)
    return out


def next_due(con: sqlite3.Connection, destination: str, *,
             oldest_event_time: float) -> float | None:
    """When the destination's next claimable row is due (``None``: nothing pending)."""
    row = con.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE destination = ? "
        "AND state = 'pending' AND event_time >= ?",
        (destination, oldest_event_time),
    ).fetchone()
    return None if row[0] is None else float(row[0])
