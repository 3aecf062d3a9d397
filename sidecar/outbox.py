"""The SQLite outbox: a durable queue of Meta payloads.

Owns the group-committed insert that makes ``200`` mean durable, the atomic
claim with a lease that the drainer uses, the final-state marks, expiry,
retention and the dead-letter verbs. Opening the file (pragmas, integrity
check, migrations) lives in ``sidecar.database``; the read-only queries
behind status pages and the CLI in ``sidecar.outbox_queries``. The three
are the only modules that speak SQL.

Threads: every write runs on one dedicated writer thread with its own
connection, so a commit is exactly one executor hop and writes never contend
for SQLite's single write lock. Reads for operators (status, event lookup)
and housekeeping's passive WAL checkpoints run on a second thread with a
second connection; WAL mode lets them proceed while the writer commits. The
writer itself truncates the WAL, as a job of its own between transactions,
once the ``-wal`` file passes ``WAL_CHECKPOINT_BYTES``, so a sustained drain
cannot grow it without bound. We use the standard ``sqlite3`` module on these
threads rather than aiosqlite because group commit needs a whole transaction
(many inserts + COMMIT) in a single hop; aiosqlite hops to its thread once
per statement.

Durability: only the ingest commit (``_insert``), which stands behind a
``200``, and the operator's dead-letter verbs run with ``synchronous=FULL``
(when that is the configured setting). Claims, marks, expiry, retention and
releases run with ``NORMAL``: no fsync in WAL mode. Losing one of those to a
power cut means at worst an event is sent again with the same event_id, and
the next FULL commit's fsync makes every earlier frame of the WAL durable
with it (docs/delivery.md).

Leases: a claim sets ``leased = 1`` and moves ``next_attempt_at`` to the end
of the lease, so a row whose holder vanished becomes claimable again when the
lease runs out, and a restart releases every lease at once. The drainer
extends a lease while it bisects a batch, so a row is never in two requests
at once while its holder is alive. docs/outbox.md has the whole design.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sidecar import database, outbox_queries
from sidecar.database import FINAL_STATES as FINAL_STATES
from sidecar.database import State as State
from sidecar.errors import OutboxError, OutboxFull, OutboxWriteError
from sidecar.rows import Claimed as Claimed
from sidecar.rows import NewDelivery as NewDelivery
from sidecar.rows import NewEvent as NewEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
MISSING_PAYLOAD_REASON = "outbox: the stored payload is missing; the event cannot be sent"
EXPIRED_REASON = "expired: older than Meta's 7-day limit before it could be delivered"
# Readiness wants room for at least this much more data before it says yes.
MIN_FREE_BYTES = 1024 * 1024
PURGE_CHUNK = 5000
# The writer truncates the WAL once its file reaches this size (checked with
# one stat() after each commit, ~2 µs). docs/outbox.md has the reasoning.
WAL_CHECKPOINT_BYTES = 32 * 1024 * 1024
# How long that checkpoint waits for a reader still on an old snapshot
# before it settles for a partial one (the writer thread is stalled meanwhile).
CHECKPOINT_BUSY_MS = 100


@dataclass(frozen=True, slots=True)
class Expired:
    """A delivery the drainer dead-lettered because its event grew too old."""

    destination: str
    message_id: str
    traceparent: str | None
    event_name: str | None


@dataclass(slots=True)
class _Pending:
    events: Sequence[NewEvent]
    future: asyncio.Future[list[bool]] = field(repr=False)


class Outbox:
    """A durable queue of Meta payloads, one row per message and destination."""

    def __init__(
        self,
        path: Path,
        *,
        cap: int = 1_000_000,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        resume_leases: bool = True,
    ) -> None:
        self.path = path
        # Only the serving process may release leases: a CLI opening the same
        # file beside a running sidecar must not steal its in-flight rows.
        self._resume_leases = resume_leases
        self.cap = cap
        self._synchronous = synchronous
        # FULL is kept for the commits that need it; every other write relaxes
        # to NORMAL. With NORMAL configured, everything is NORMAL.
        self._full = synchronous.upper() == "FULL"
        self._wal_path = path.with_name(path.name + "-wal")
        self._checkpoint_at = WAL_CHECKPOINT_BYTES  # WAL size that queues the next one
        self._checkpoint_backoff = 0  # growth before retrying a checkpoint a reader blocked
        self._checkpoint_queued = False
        self._closing = False
        self._clock = clock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self.pending = 0  # pending deliveries, kept in memory for the cap check
        self.write_failed = False  # last commit failed (disk full, I/O); cleared by a success
        self.commits = 0
        self.wal_checkpoints = 0  # WAL checkpoints the writer ran (tests, diagnostics)
        self._default_max_pages = 0

    # ------------------------------------------------------------------ life
    async def open(self) -> None:
        """Open (creating if needed), migrate, and release leases of a dead process."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open_writer)
            await loop.run_in_executor(self._reader, self._open_reader)
        except BaseException:
            # close() is never called for an outbox that did not open.
            if self._wcon is not None:
                self._wcon.close()
            self._writer.shutdown(wait=False)
            self._reader.shutdown(wait=False)
            raise
        self._queue = asyncio.Queue()
        self._commit_task = asyncio.create_task(self._commit_loop(), name="outbox-commit")

    async def close(self) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        while self._queue is not None and not self._queue.empty():
            waiting = self._queue.get_nowait()
            if not waiting.future.done():
                waiting.future.set_exception(OutboxError("the outbox is closing"))
        loop = asyncio.get_running_loop()
        self._closing = True
        if self._wcon is not None:
            await loop.run_in_executor(self._writer, _checkpoint_and_close, self._wcon)
        if self._rcon is not None:
            await loop.run_in_executor(self._reader, self._rcon.close)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    def _open_writer(self) -> None:
        con = database.open_writer(self.path, self._synchronous)
        with database.translated_errors(self.path):
            if self._resume_leases:
                con.execute(
                    "UPDATE deliveries SET leased = 0, next_attempt_at = ? "
                    "WHERE state = 'pending' AND leased = 1",
                    (self._clock(),),
                )
            self.pending = con.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()[0]
        self._default_max_pages = int(con.execute("PRAGMA max_page_count").fetchone()[0])
        if self._full:
            _relax(con)
        self._wcon = con

    def _open_reader(self) -> None:
        self._rcon = database.open_reader(self.path, self._synchronous)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _transaction(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False
    ) -> T:
        """Run ``fn`` inside BEGIN IMMEDIATE … COMMIT on the writer thread.

        ``durable``: the commit is fsynced (``synchronous=FULL``, when that is
        the configured setting) because a person or a client is told it
        happened; otherwise it runs with ``NORMAL`` (see ``_write``).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write, fn, durable)

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    # ---------------------------------------------------------------- ingest
    @property
    def over_cap(self) -> bool:
        return self.pending >= self.cap

    async def add(self, events: Sequence[NewEvent]) -> list[bool]:
        """Store events durably; True per event that is new, False for a duplicate.

        Returns only after the COMMIT that holds them. Concurrent calls share
        one commit (group commit): the commit loop takes every request that
        queued while the previous commit ran.
        """
        if self.over_cap:
            raise OutboxFull(f"outbox holds {self.pending} pending deliveries (cap {self.cap})")
        assert self._queue is not None, "outbox is not open"
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(events, future))
        return await future

    async def _commit_loop(self) -> None:
        assert self._queue is not None
        while True:
            group = [await self._queue.get()]
            while not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                results = await self._on_writer(self._insert, [p.events for p in group])
            except Exception as err:
                # Whatever failed, this loop must survive it: every later ingest
                # waits on it. The callers answer 503; nothing was acknowledged.
                if not isinstance(err, OutboxError):
                    log.exception("unexpected error while committing ingested events")
                    err = OutboxWriteError(f"outbox write failed: {err!r}")
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            for item, result in zip(group, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    def _insert(self, groups: list[Sequence[NewEvent]]) -> list[list[bool]]:
        """The group commit behind ``200``: the one write that is always fsynced (FULL)."""
        con = self._wcon
        assert con is not None
        try:
            if self._full:
                # Outside the transaction: SQLite refuses to change it inside.
                con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN IMMEDIATE")
            out, added_pending = self._insert_rows(con, groups)
            con.execute("COMMIT")
        except BaseException as err:
            _rollback(con)
            self.write_failed = True
            if isinstance(err, sqlite3.Error):
                raise OutboxWriteError(f"outbox write failed: {err}") from err
            raise
        finally:
            if self._full:
                _relax(con)
        self.write_failed = False
        self.pending += added_pending
        self.commits += 1
        self._after_commit()
        return out

    @staticmethod
    def _insert_rows(
        con: sqlite3.Connection, groups: list[Sequence[NewEvent]]
    ) -> tuple[list[list[bool]], int]:
        """Insert every new event of ``groups`` inside the caller's transaction.

        Set-wise rather than row by row: one query finds the message ids
        already stored, the new events get ids counted up from the largest
        one (the write lock is held, so nobody else can take them), and each
        table (events, deliveries, payloads) gets one ``executemany``. That is
        about a third less CPU per event than an ``INSERT … RETURNING id`` per
        event, and the loop over rows runs in C. A message id repeated within the group counts once,
        the first time, like a retried request would.
        """
        ids = orjson.dumps([ev.message_id for events in groups for ev in events]).decode()
        seen = {row[0] for row in con.execute(
            "SELECT message_id FROM events WHERE message_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )}
        next_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
        next_did = con.execute("SELECT coalesce(max(id), 0) + 1 FROM deliveries").fetchone()[0]
        event_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        payload_rows: list[tuple[int, bytes]] = []
        added_pending = 0
        out: list[list[bool]] = []
        for events in groups:
            flags: list[bool] = []
            for ev in events:
                if ev.message_id in seen:
                    flags.append(False)
                    continue
                seen.add(ev.message_id)
                flags.append(True)
                event_rows.append((next_id, ev.message_id, ev.type, ev.event_name,
                                   ev.received_at, ev.event_time, ev.traceparent))
                for d in ev.deliveries:
                    delivery_rows.append((next_did, next_id, d.destination, d.state,
                                          ev.event_time, ev.received_at, d.reason,
                                          ev.received_at, d.coverage))
                    if d.payload is not None:
                        payload_rows.append((next_did, d.payload))
                    added_pending += d.state == "pending"
                    next_did += 1
                next_id += 1
            out.append(flags)
        con.executemany(
            "INSERT INTO events "
            "(id, message_id, type, event_name, received_at, event_time, traceparent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        con.executemany(
            "INSERT INTO deliveries (id, event_id, destination, state, event_time, "
            "next_attempt_at, reason, updated_at, coverage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            delivery_rows,
        )
        con.executemany("INSERT INTO payloads (delivery_id, body) VALUES (?, ?)", payload_rows)
        return out, added_pending

    # --------------------------------------------------------------- drainer
    async def claim(
        self, destination: str, limit: int, *, now: float, lease: float, oldest_event_time: float
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries of one destination, oldest first."""
        return await self._on_writer(
            self._claim, destination, limit, now, lease, oldest_event_time
        )

    def _claim(
        self, destination: str, limit: int, now: float, lease: float, oldest: float
    ) -> list[Claimed]:
        con = self._wcon
        assert con is not None
        try:
            con.execute("BEGIN IMMEDIATE")
            rows = con.execute(
                "UPDATE deliveries SET leased = 1, attempts = attempts + 1, "
                "next_attempt_at = ?, updated_at = ? WHERE id IN ("
                " SELECT id FROM deliveries WHERE destination = ? AND state = 'pending'"
                " AND next_attempt_at <= ? AND event_time >= ?"
                " ORDER BY next_attempt_at, id LIMIT ?) "
                "RETURNING id, event_id, attempts, coverage",
                (now + lease, now, destination, now, oldest, limit),
            ).fetchall()
            meta: dict[int, tuple[str, str | None, str | None]] = {}
            bodies: dict[int, bytes] = {}
            if rows:
                ids = orjson.dumps([r[1] for r in rows]).decode()
                for eid, mid, tp, name in con.execute(
                    "SELECT id, message_id, traceparent, event_name FROM events "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (ids,),
                ):
                    meta[eid] = (mid, tp, name)
                bodies = dict(con.execute(
                    "SELECT delivery_id, body FROM payloads "
                    "WHERE delivery_id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps([r[0] for r in rows]).decode(),),
                ).fetchall())
            lost = 0
            if len(bodies) < len(rows):
                kept = _without_payload_dead(con, rows, bodies, now)
                lost, rows = len(rows) - len(kept), kept
            con.execute("COMMIT")
        except BaseException as err:
            _rollback(con)
            if isinstance(err, sqlite3.Error):
                raise OutboxWriteError(f"claim failed: {err}") from err
            raise
        self.pending -= lost
        self._after_commit()
        rows.sort(key=lambda r: r[0])
        return [
            Claimed(r[0], meta[r[1]][0], bodies[r[0]], r[2], meta[r[1]][1], meta[r[1]][2], r[3])
            for r in rows
        ]

    async def mark_delivered(self, ids: Iterable[int], *, now: float) -> None:
        # The payload is dropped at once: it holds the client IP and user agent.
        await self._final(list(ids), "delivered", now, None, None)

    async def mark_dead(
        self, ids: Iterable[int], *, now: float, reason: str, error: dict[str, Any] | None = None
    ) -> None:
        await self._final(list(ids), "dead", now, reason, error)

    async def _final(
        self, ids: list[int], state: State, now: float, reason: str | None,
        error: dict[str, Any] | None,
    ) -> None:
        if not ids:
            return
        err = orjson.dumps(error).decode() if error else None
        idj = orjson.dumps(ids).decode()

        def run(con: sqlite3.Connection) -> int:
            changed = con.execute(
                "UPDATE deliveries SET state = ?, leased = 0, reason = ?, "
                "last_error = coalesce(?, last_error), updated_at = ? "
                "WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending'",
                (state, reason, err, now, idj),
            ).rowcount
            if state == "delivered":
                # Delivered rows keep no payload; a dead one keeps it for a retry.
                con.execute(
                    "DELETE FROM payloads WHERE delivery_id IN (SELECT d.id FROM deliveries d "
                    "WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state = 'delivered')",
                    (idj,),
                )
            return changed

        changed = await self._transaction(run)
        self.pending -= changed

    async def mark_retry(
        self, ids: Iterable[int], *, now: float, next_attempt_at: Sequence[float] | float,
        error: dict[str, Any] | None, refund_attempt: bool = False,
    ) -> None:
        """Release leased rows for another attempt at ``next_attempt_at``.

        ``refund_attempt`` gives the attempt back (a paused destination's
        probe should not count against the event).
        """
        idl = list(ids)
        if not idl:
            return
        times = (
            [float(next_attempt_at)] * len(idl)
            if isinstance(next_attempt_at, int | float)
            else list(next_attempt_at)
        )
        err = orjson.dumps(error).decode() if error else None
        refund = 1 if refund_attempt else 0

        def run(con: sqlite3.Connection) -> int:
            con.executemany(
                "UPDATE deliveries SET leased = 0, next_attempt_at = ?, "
                "last_error = coalesce(?, last_error), updated_at = ?, "
                "attempts = attempts - ? WHERE id = ? AND state = 'pending'",
                [(t, err, now, refund, i) for i, t in zip(idl, times, strict=True)],
            )
            return 0

        await self._transaction(run)

    def _write(self, fn: Callable[[sqlite3.Connection], T], durable: bool = False) -> T:
        con = self._wcon
        assert con is not None
        full = durable and self._full
        try:
            if full:
                con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN IMMEDIATE")
            result = fn(con)
            con.execute("COMMIT")
        except BaseException as err:
            # Never leave a transaction open on the shared connection: every
            # later BEGIN would fail and the outbox would be dead.
            _rollback(con)
            if isinstance(err, sqlite3.Error):
                raise OutboxWriteError(f"outbox write failed: {err}") from err
            raise
        finally:
            if full:
                _relax(con)
        self._after_commit()
        return result

    # ------------------------------------------------------------ WAL size
    def _after_commit(self) -> None:
        """On the writer thread, after a commit: start a checkpoint once the WAL is large.

        Never inside a commit, and in two steps: a PASSIVE checkpoint on the
        reader thread copies the bulk of the WAL into the database beside the
        writer, which keeps committing; then ``_checkpoint_wal`` runs as a job
        of its own on the writer thread, between transactions, for the rest.
        The commit that crossed the line answers its callers first.
        """
        if self._checkpoint_queued:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size < self._checkpoint_at:
            return
        self._checkpoint_queued = True
        try:
            copied = self._reader.submit(self._copy_wal)
        except RuntimeError:  # the outbox is closing; close() checkpoints
            return
        copied.add_done_callback(self._queue_truncate)

    def _copy_wal(self) -> None:
        """Reader thread: copy what the WAL holds into the database, blocking no one."""
        con = self._rcon
        if con is None or self._closing:
            return
        with contextlib.suppress(sqlite3.Error):
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _queue_truncate(self, _copied: Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the outbox is closing
            self._writer.submit(self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        """``wal_checkpoint(TRUNCATE)`` on the writer thread, between transactions.

        TRUNCATE copies the frames ``_copy_wal`` left (those appended since)
        into the database (no writer can append meanwhile: this is the writer
        thread), waits up to ``CHECKPOINT_BUSY_MS``
        for readers still on an older snapshot, and cuts the file to zero, so
        its size is again a measure of what it holds. If a reader (or
        housekeeping's passive checkpoint) is in the way, the frames copied so
        far stay copied, and the next attempt waits until the WAL has grown
        by a quarter of ``WAL_CHECKPOINT_BYTES``, twice that after a second
        failure, and so on up to ``WAL_CHECKPOINT_BYTES``: a reader that holds
        a snapshot for long costs a few short stalls, not one per commit, and
        the WAL still cannot grow without bound behind it.
        """
        self._checkpoint_queued = False
        con = self._wcon
        if con is None or self._closing:
            return
        busy = 1
        try:
            con.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                busy = int(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
            finally:
                con.execute(f"PRAGMA busy_timeout={database.BUSY_TIMEOUT_MS}")
        except sqlite3.Error as err:
            log.warning("WAL checkpoint failed, will try again: %s", err)
        self.wal_checkpoints += 1
        if not busy:
            self._checkpoint_at = WAL_CHECKPOINT_BYTES
            self._checkpoint_backoff = 0
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            size = 0
        # Ever wider apart, up to one attempt per WAL_CHECKPOINT_BYTES of growth:
        # a reader that stays in the way must not let the WAL grow unchecked.
        self._checkpoint_backoff = min(
            WAL_CHECKPOINT_BYTES, max(WAL_CHECKPOINT_BYTES // 4, 2 * self._checkpoint_backoff))
        self._checkpoint_at = size + self._checkpoint_backoff

    async def expire_due(
        self, destination: str | None, now: float, oldest_event_time: float
    ) -> list[Expired]:
        """Dead-letter pending deliveries whose event is older than ``oldest_event_time``.

        Meta fails a whole request for one event older than 7 days, so such an
        event must never be claimed (``claim`` skips it) and ends here as dead.
        A row under a live lease is left to its holder; a row whose lease ran
        out (its holder is gone) is fair game.
        """

        def run(con: sqlite3.Connection) -> list[Expired]:
            args: list[Any] = [EXPIRED_REASON, now, oldest_event_time, now]
            if destination is not None:
                args.append(destination)
            rows = con.execute(_expire_sql(destination is not None), args).fetchall()
            meta = _event_meta(con, [r[1] for r in rows])
            return [Expired(r[0], *meta[r[1]]) for r in rows]

        expired = await self._transaction(run)
        self.pending -= len(expired)
        return expired

    async def extend_lease(self, ids: Iterable[int], *, until: float) -> None:
        """Keep rows leased until ``until`` (the drainer calls it between bisect steps)."""
        idl = list(ids)
        if not idl:
            return

        def run(con: sqlite3.Connection) -> None:
            con.execute(
                "UPDATE deliveries SET next_attempt_at = max(next_attempt_at, ?) "
                "WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending' AND leased = 1",
                (until, orjson.dumps(idl).decode()),
            )

        await self._transaction(run)

    async def release(self, ids: Iterable[int], *, now: float) -> int:
        """Give leased rows back at once, the attempt refunded (a shutdown cut it short)."""
        idl = list(ids)
        if not idl:
            return 0

        def run(con: sqlite3.Connection) -> int:
            return int(
                con.execute(
                    "UPDATE deliveries SET leased = 0, next_attempt_at = ?, "
                    "attempts = max(attempts - 1, 0) "
                    "WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND state = 'pending' AND leased = 1",
                    (now, orjson.dumps(idl).decode()),
                ).rowcount
            )

        return await self._transaction(run)

    async def purge(self, *, now: float, delivered_age: float, dead_age: float) -> int:
        """Delete final rows past their retention, and events left without rows.

        Runs in chunks of ``PURGE_CHUNK`` rows, one short transaction each, so
        a large purge never holds the write lock long enough to delay ingest.
        Returns the number of delivery rows deleted.
        """
        total = 0
        for kind, age in (("done", delivered_age), ("dead", dead_age)):
            while True:
                n = await self._transaction(functools.partial(_purge_chunk, kind, now - age))
                total += n
                if n < PURGE_CHUNK:
                    break
        return total

    # ---------------------------------------------------------- dead letters
    async def retry_dead(self, *, destination: str | None, message_ids: Sequence[str] | None,
                         now: float) -> int:
        """Move dead deliveries back to pending (all, one destination, or some events)."""

        def run(con: sqlite3.Connection) -> int:
            sql = ("UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                   "reason = NULL, updated_at = ? WHERE state != 'pending' AND state = 'dead' "
                   "AND EXISTS (SELECT 1 FROM payloads p WHERE p.delivery_id = deliveries.id)")
            args: list[Any] = [now, now]
            sql, args = _narrow(sql, args, destination, message_ids)
            return int(con.execute(sql, args).rowcount)

        # Durable: the operator is told how many rows went back to pending.
        n = await self._transaction(run, durable=True)
        self.pending += n
        return n

    async def purge_dead(self, *, destination: str | None,
                         message_ids: Sequence[str] | None) -> int:
        """Delete dead deliveries (all, one destination, or some events) now."""
        def run(con: sqlite3.Connection) -> int:
            sql, args = _narrow(
                "DELETE FROM deliveries WHERE state != 'pending' AND state = 'dead'", [],
                destination, message_ids)
            rows = con.execute(sql + " RETURNING event_id", args).fetchall()
            _drop_orphan_events(con, [r[0] for r in rows])
            return len(rows)

        # Durable: the operator is told the rows (and their payloads) are gone.
        return await self._transaction(run, durable=True)

    # ------------------------------------------------------------- read side
    async def _query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one of ``outbox_queries`` on the reader thread and its connection."""

        def run() -> T:
            con = self._rcon
            assert con is not None
            return fn(con, *args, **kwargs)

        return await self._on_reader(run)

    async def dead_letters(self, *, destination: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._query(outbox_queries.dead_letters, destination=destination, limit=limit)

    async def event_status(self, message_id: str) -> dict[str, Any] | None:
        return await self._query(outbox_queries.event_status, message_id)

    async def stats(self, *, now: float, final_states: bool = True) -> dict[str, dict[str, Any]]:
        """Per destination: rows per state and the age of the oldest pending event.

        ``final_states=False`` leaves out the delivered/skipped/dead counts
        (and destinations with nothing pending): the gauges need only the
        pending side, which costs nothing like counting retained rows.
        """
        stats = await self._query(outbox_queries.stats, now=now, final_states=final_states)
        # Resynchronise the in-memory count used by the cap check: another
        # process (the CLI's dead-letters retry) may have changed the table.
        self.pending = sum(entry["pending"] for entry in stats.values())
        return stats

    async def next_due(self, destination: str, *, oldest_event_time: float) -> float | None:
        """When the destination's next claimable row is due (``None``: nothing pending)."""
        return await self._query(
            outbox_queries.next_due, destination, oldest_event_time=oldest_event_time
        )

    async def check_writable(self) -> bool:
        """Readiness probe: a write transaction opens and there is room to grow.

        Room means both the size limit (``set_size_limit``) and the file
        system have space left. After a failed write, a probe that finds room
        again clears ``write_failed``: readiness recovers on its own when space
        returns, without waiting for an ingest to succeed first.
        """
        def run(con: sqlite3.Connection) -> bool:
            con.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchone()
            return self._has_room(con)

        try:
            ok = await self._transaction(run)
        except OutboxError:
            return False
        if ok:
            self.write_failed = False
        return ok

    def _has_room(self, con: sqlite3.Connection) -> bool:
        page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
        used = int(con.execute("PRAGMA page_count").fetchone()[0])
        free = int(con.execute("PRAGMA freelist_count").fetchone()[0])
        limit = int(con.execute("PRAGMA max_page_count").fetchone()[0])
        if (limit - used + free) * page_size < MIN_FREE_BYTES:
            return False
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize >= MIN_FREE_BYTES

    async def set_size_limit(self, max_bytes: int | None) -> int:
        """Cap the database at ``max_bytes`` (``None``: no cap); the effective bytes.

        Past the cap an insert fails like a full disk does (SQLITE_FULL): ingest
        answers 503 with Retry-After and readiness turns false. SQLite never
        shrinks the cap below the current size.
        """
        def run(con: sqlite3.Connection) -> int:
            page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
            pages = self._default_max_pages if max_bytes is None else max_bytes // page_size
            row = con.execute(f"PRAGMA max_page_count = {max(1, int(pages))}").fetchone()
            return int(row[0]) * page_size

        return await self._on_writer(run, self._wcon)

    async def checkpoint(self) -> tuple[int, int]:
        """Move WAL content into the database file; called off the request path."""
        def run() -> tuple[int, int]:
            con = self._rcon
            assert con is not None
            row = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(row[1]), int(row[2])

        return await self._on_reader(run)


def _checkpoint_and_close(con: sqlite3.Connection) -> None:
    # Leave a compact file behind: the next start (or a backup) finds the WAL
    # folded into the database. Busy readers only make this a partial one.
    with contextlib.suppress(sqlite3.Error):
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _relax(con: sqlite3.Connection) -> None:
    """Back to ``synchronous=NORMAL`` after a durable commit (or at open)."""
    # Fails only inside a transaction (a rollback that failed): the
    # connection then stays FULL, which is merely slower.
    with contextlib.suppress(sqlite3.Error):
        con.execute("PRAGMA synchronous=NORMAL")


def _expire_sql(per_destination: bool) -> str:
    """The expiry sweep, for one destination or all.

    ``+destination`` keeps SQLite from picking ``deliveries_due`` for the
    destination, which would walk every pending row of it to test its age:
    the sweep searches ``deliveries_age`` for the too-old rows only (0.1 ms
    instead of ~0.6 s at 1,000,000 pending; tests/test_outbox.py checks the
    plan).
    """
    sql = (
        "UPDATE deliveries SET state = 'dead', leased = 0, reason = ?, updated_at = ? "
        "WHERE state = 'pending' AND event_time < ? "
        "AND (leased = 0 OR next_attempt_at <= ?)"
    )
    if per_destination:
        sql += " AND +destination = ?"
    return sql + " RETURNING destination, event_id"


def _rollback(con: sqlite3.Connection) -> None:
    if con.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")


def _event_meta(
    con: sqlite3.Connection, event_ids: Sequence[int]
) -> dict[int, tuple[str, str | None, str | None]]:
    """message_id, traceparent and event_name of some events, by events.id."""
    if not event_ids:
        return {}
    rows = con.execute(
        "SELECT id, message_id, traceparent, event_name FROM events "
        "WHERE id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(list(event_ids)).decode(),),
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


# Final rows are found through the partial index deliveries_final (state,
# destination, updated_at) WHERE state != 'pending'. SQLite uses a partial
# index only when the query repeats its condition word for word
# (``state = 'dead'`` alone does not count), hence the redundant term here
# and in the dead-letter verbs. Each statement is one destination's rows of
# one state, oldest first: an index range.
_PURGE_SQL: dict[str, str] = {
    # The state is a literal (one of FINAL_STATES, never input): with a
    # parameter SQLite could not tell that the partial index applies.
    state: "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "  # noqa: S608
    f"WHERE state != 'pending' AND state = '{state}' AND destination = ? "
    "AND updated_at < ? LIMIT ?) RETURNING event_id"
    for state in FINAL_STATES
}
_PURGE_STATES: dict[str, tuple[State, ...]] = {"done": ("delivered", "skipped"), "dead": ("dead",)}


def _purge_chunk(kind: str, cutoff: float, con: sqlite3.Connection) -> int:
    """Delete up to ``PURGE_CHUNK`` rows of ``kind`` settled before ``cutoff``."""
    deleted: list[int] = []
    for state in _PURGE_STATES[kind]:
        for destination in outbox_queries.final_destinations(con, state):
            left = PURGE_CHUNK - len(deleted)
            if left <= 0:
                break
            deleted += [r[0] for r in con.execute(
                _PURGE_SQL[state], (destination, cutoff, left)).fetchall()]
    _drop_orphan_events(con, deleted)
    return len(deleted)


def _without_payload_dead(
    con: sqlite3.Connection, rows: list[Any], bodies: dict[int, bytes], now: float
) -> list[Any]:
    """Claimed rows that have a payload; any without one (which ingest never
    writes) is made a dead letter here rather than claimed over and over."""
    missing = [r[0] for r in rows if r[0] not in bodies]
    log.error("%d pending deliveries have no payload; they are dead letters", len(missing))
    con.execute(
        "UPDATE deliveries SET state = 'dead', leased = 0, reason = ?, updated_at = ? "
        "WHERE id IN (SELECT value FROM json_each(?))",
        (MISSING_PAYLOAD_REASON, now, orjson.dumps(missing).decode()),
    )
    return [r for r in rows if r[0] in bodies]


def _drop_orphan_events(con: sqlite3.Connection, event_ids: Sequence[int]) -> None:
    """Delete those of ``event_ids`` that no delivery row refers to any more."""
    if event_ids:
        con.execute(
            "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
            "(SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
            (orjson.dumps(sorted(set(event_ids))).decode(),),
        )


def _narrow(sql: str, args: list[Any], destination: str | None,
            message_ids: Sequence[str] | None) -> tuple[str, list[Any]]:
    if destination:
        sql += " AND destination = ?"
        args.append(destination)
    if message_ids:
        sql += (" AND event_id IN (SELECT id FROM events WHERE message_id IN "
                "(SELECT value FROM json_each(?)))")
        args.append(orjson.dumps(list(message_ids)).decode())
    return sql, args
