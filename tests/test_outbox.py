"""The SQLite outbox on a real database file: commit, claim, lease, marks, expiry, retention."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import database
from sidecar.errors import OutboxCorrupt, OutboxFull, OutboxWriteError
from sidecar.outbox import EXPIRED_REASON, NewDelivery, NewEvent, Outbox

T0 = 1_790_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(mid: str, *, at: float = T0, dests: tuple[str, ...] = ("a",),
          payload: Any = b'{"event_name":"PageView"}', state: str = "pending") -> NewEvent:
    return NewEvent(
        message_id=mid, type="page", event_name="PageView", received_at=at, event_time=int(at),
        traceparent=None,
        deliveries=tuple(NewDelivery(d, state, payload if state == "pending" else None,  # type: ignore[arg-type]
                                     None if state == "pending" else "filtered")
                         for d in dests),
    )


@pytest.fixture
async def open_outbox(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Outbox] = []

    async def make(**kw: Any) -> Outbox:
        kw.setdefault("clock", Clock())
        box = Outbox(tmp_path / "outbox.db", **kw)
        await box.open()
        opened.append(box)
        return box

    yield make
    for box in opened:
        if box._wcon is not None:
            await box.close()


async def close(box: Outbox) -> None:
    await box.close()
    box._wcon = None


async def test_a_new_database_file_is_private_to_its_owner(open_outbox: Any,
                                                            tmp_path: Path) -> None:
    await open_outbox()
    mode = stat.S_IMODE((tmp_path / "outbox.db").stat().st_mode)
    assert mode == 0o600


async def test_concurrent_adds_share_commits_and_all_are_stored(open_outbox: Any) -> None:
    box = await open_outbox()
    results = await asyncio.gather(*(box.add([event(f"m{i}")]) for i in range(200)))
    assert results == [[True]] * 200
    assert box.commits < 200 / 4  # grouped, not one fsync per request
    assert box.pending == 200


async def test_a_repeated_message_id_is_reported_and_stored_once(open_outbox: Any) -> None:
    box = await open_outbox()
    assert await box.add([event("m1"), event("m1")]) == [True, False]
    assert await box.add([event("m1")]) == [False]
    assert box.pending == 1


async def test_a_message_id_repeated_by_requests_of_one_group_commit_is_stored_once(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    await box.add([event("m0")])
    commits = box.commits
    results = await asyncio.gather(
        box.add([event("m1", dests=("a", "b"))]), box.add([event("m0"), event("m1")]),
        box.add([event("m2")]),
    )
    assert box.commits == commits + 1  # the three requests shared one commit
    assert results == [[True], [False, False], [True]]
    assert box.pending == 4  # m0, m1 twice (a and b), m2
    status = await box.event_status("m1")
    assert status is not None
    assert sorted(status["destinations"]) == ["a", "b"]


async def test_a_failed_commit_stores_nothing_and_the_next_one_works(open_outbox: Any) -> None:
    box = await open_outbox()
    with pytest.raises(OutboxWriteError):
        await box.add([event("good"), event("bad", payload=object())])
    assert box.write_failed
    assert await box.event_status("good") is None
    assert await box.add([event("good")]) == [True]
    assert not box.write_failed


async def test_claim_leases_the_oldest_due_rows_and_hides_them_until_the_lease_ends(
    open_outbox: Any,
) -> None:
    clock = Clock()
    box = await open_outbox(clock=clock)
    await box.add([event(f"m{i}", at=T0 + i) for i in range(5)])
    first = await box.claim("a", 3, now=T0 + 10, lease=60, oldest_event_time=0)
    assert [c.message_id for c in first] == ["m0", "m1", "m2"]
    assert all(c.attempts == 1 for c in first)
    second = await box.claim("a", 10, now=T0 + 11, lease=60, oldest_event_time=0)
    assert [c.message_id for c in second] == ["m3", "m4"]
    assert await box.claim("a", 10, now=T0 + 69, lease=60, oldest_event_time=0) == []
    again = await box.claim("a", 10, now=T0 + 70.5, lease=60, oldest_event_time=0)
    assert [c.message_id for c in again] == ["m0", "m1", "m2"]
    assert all(c.attempts == 2 for c in again)


async def test_claims_are_per_destination(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1", dests=("a", "b"))])
    a = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    b = await box.claim("b", 10, now=T0, lease=60, oldest_event_time=0)
    assert [c.message_id for c in a] == [c.message_id for c in b] == ["m1"]
    await box.mark_delivered([a[0].id], now=T0)
    status = await box.event_status("m1")
    assert status is not None
    assert status["destinations"]["a"]["state"] == "delivered"
    assert status["destinations"]["b"]["state"] == "pending"


async def test_a_restart_releases_the_leases_of_the_dead_process(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    assert await box.claim("a", 10, now=T0, lease=600, oldest_event_time=0)
    await close(box)
    reopened = await open_outbox(clock=Clock(T0 + 1))
    again = await reopened.claim("a", 10, now=T0 + 1, lease=600, oldest_event_time=0)
    assert [c.message_id for c in again] == ["m1"]


async def test_the_cli_opening_the_file_does_not_steal_the_servers_leases(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    assert await box.claim("a", 10, now=T0, lease=600, oldest_event_time=0)
    cli = await open_outbox(resume_leases=False)
    status = await cli.event_status("m1")
    assert status is not None and status["destinations"]["a"]["in_flight"] is True
    await close(cli)
    assert await box.claim("a", 10, now=T0 + 1, lease=600, oldest_event_time=0) == []


async def test_delivered_rows_drop_their_payload_and_leave_the_pending_count(
    open_outbox: Any, tmp_path: Path,
) -> None:
    box = await open_outbox()
    await box.add([event("m1"), event("m2"), event("m3")])
    claimed = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert [c.payload for c in claimed] == [b'{"event_name":"PageView"}'] * 3
    await box.mark_dead([claimed[2].id], now=T0, reason="x")
    await box.mark_delivered([c.id for c in claimed], now=T0)
    await box.mark_delivered([c.id for c in claimed], now=T0)  # twice: no effect
    assert box.pending == 0
    with sqlite3.connect(tmp_path / "outbox.db") as con:
        # Only the dead letter keeps its payload (for a retry); the column
        # the payloads lived in before migration 0004 stays empty.
        assert con.execute("SELECT delivery_id FROM payloads").fetchall() == [(claimed[2].id,)]
        assert con.execute("SELECT COUNT(*) FROM deliveries WHERE payload IS NOT NULL"
                           ).fetchone()[0] == 0


async def test_a_pending_row_without_its_payload_becomes_a_dead_letter_not_a_loop(
    open_outbox: Any, tmp_path: Path,
) -> None:
    box = await open_outbox()
    await box.add([event("m1"), event("m2")])
    with sqlite3.connect(tmp_path / "outbox.db") as con:
        con.execute("DELETE FROM payloads WHERE delivery_id = "
                    "(SELECT min(delivery_id) FROM payloads)")
    claimed = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert [c.message_id for c in claimed] == ["m2"]
    assert box.pending == 1
    status = await box.event_status("m1")
    assert status is not None
    assert status["destinations"]["a"]["state"] == "dead"
    assert "payload is missing" in status["destinations"]["a"]["reason"]


async def test_a_final_state_is_never_left_again_by_a_late_mark(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    (c,) = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    await box.mark_dead([c.id], now=T0, reason="rejected by Meta: bad", error={"code": 100})
    await box.mark_retry([c.id], now=T0, next_attempt_at=T0, error=None)
    await box.mark_delivered([c.id], now=T0)
    status = await box.event_status("m1")
    assert status is not None
    assert status["destinations"]["a"]["state"] == "dead"
    assert status["destinations"]["a"]["last_error"] == {"code": 100}


async def test_a_retry_with_refund_does_not_count_the_attempt(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    (c,) = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    await box.mark_retry([c.id], now=T0, next_attempt_at=T0 + 5, error={"code": 190},
                         refund_attempt=True)
    assert await box.claim("a", 10, now=T0 + 4, lease=60, oldest_event_time=0) == []
    (again,) = await box.claim("a", 10, now=T0 + 5, lease=60, oldest_event_time=0)
    assert again.attempts == 1


async def test_release_gives_leased_rows_back_at_once(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    (c,) = await box.claim("a", 10, now=T0, lease=600, oldest_event_time=0)
    assert await box.release([c.id], now=T0 + 1) == 1
    (again,) = await box.claim("a", 10, now=T0 + 1, lease=600, oldest_event_time=0)
    assert again.attempts == 1


async def test_extending_a_lease_keeps_the_rows_hidden(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1")])
    (c,) = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    await box.extend_lease([c.id], until=T0 + 120)
    assert await box.claim("a", 10, now=T0 + 90, lease=60, oldest_event_time=0) == []
    assert await box.claim("a", 10, now=T0 + 121, lease=60, oldest_event_time=0)


async def test_too_old_events_are_never_claimed_and_expire_as_dead(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("old", at=T0 - 8 * DAY), event("young", at=T0)])
    claimed = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=T0 - 7 * DAY)
    assert [c.message_id for c in claimed] == ["young"]
    expired = await box.expire_due("a", T0, T0 - 7 * DAY)
    assert [e.message_id for e in expired] == ["old"]
    status = await box.event_status("old")
    assert status is not None
    assert status["destinations"]["a"]["state"] == "dead"
    assert status["destinations"]["a"]["reason"] == EXPIRED_REASON
    assert box.pending == 1


async def test_expiry_leaves_a_live_lease_alone_but_takes_an_abandoned_one(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    await box.add([event("m1", at=T0)])
    await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert await box.expire_due("a", T0 + 30, T0 + 1) == []
    assert [e.message_id for e in await box.expire_due("a", T0 + 61, T0 + 1)] == ["m1"]


async def test_dead_letters_are_listed_retried_and_purged(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("m1"), event("m2")])
    claimed = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    error = {"code": 100, "subcode": 2804001, "message": "bad", "fbtrace_id": "F1"}
    await box.mark_dead([c.id for c in claimed], now=T0, reason="rejected by Meta: bad",
                        error=error)
    listed = await box.dead_letters(destination=None, limit=10)
    assert {d["message_id"] for d in listed} == {"m1", "m2"}
    assert listed[0]["last_error"] == error
    assert await box.retry_dead(destination=None, message_ids=["m1"], now=T0) == 1
    assert box.pending == 1
    (again,) = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert (again.message_id, again.attempts) == ("m1", 1)
    assert await box.purge_dead(destination="a", message_ids=None) == 1
    assert await box.event_status("m2") is None  # its event row went with it
    assert await box.dead_letters(destination=None, limit=10) == []


async def test_retention_purges_final_rows_by_age_and_never_pending_ones(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    await box.add([event("delivered"), event("dead"), event("pending"),
                   event("skipped", state="skipped")])
    claimed = {c.message_id: c.id for c in
               await box.claim("a", 2, now=T0, lease=60, oldest_event_time=0)}
    await box.mark_delivered([claimed["delivered"]], now=T0)
    await box.mark_dead([claimed["dead"]], now=T0, reason="x")
    assert await box.purge(now=T0 + DAY - 1, delivered_age=DAY, dead_age=7 * DAY) == 0
    assert await box.purge(now=T0 + DAY + 1, delivered_age=DAY, dead_age=7 * DAY) == 2
    assert await box.event_status("delivered") is None
    assert await box.event_status("skipped") is None
    assert await box.event_status("dead") is not None
    assert await box.purge(now=T0 + 7 * DAY + 1, delivered_age=DAY, dead_age=7 * DAY) == 1
    assert await box.event_status("dead") is None
    assert await box.purge(now=T0 + 365 * DAY, delivered_age=DAY, dead_age=7 * DAY) == 0
    assert await box.event_status("pending") is not None


async def test_a_purge_larger_than_one_chunk_deletes_everything_due(
    open_outbox: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sidecar.outbox

    monkeypatch.setattr(sidecar.outbox, "PURGE_CHUNK", 7)
    box = await open_outbox()
    await box.add([event(f"m{i}", state="skipped") for i in range(30)])
    assert await box.purge(now=T0 + 2 * DAY, delivered_age=DAY, dead_age=DAY) == 30
    assert (await box.stats(now=T0)) == {}


async def test_the_outbox_refuses_more_once_over_its_cap(open_outbox: Any) -> None:
    box = await open_outbox(cap=3)
    await box.add([event(f"m{i}") for i in range(3)])
    assert box.over_cap
    with pytest.raises(OutboxFull):
        await box.add([event("m4")])


async def test_a_size_limit_fails_writes_like_a_full_disk_and_recovers(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    await box.set_size_limit(1)
    big = b'{"event_name":"PageView","pad":"' + b"x" * 3000 + b'"}'
    with pytest.raises(OutboxWriteError, match="full"):
        await box.add([event(f"m{i}", payload=big) for i in range(50)])
    assert box.write_failed
    assert not await box.check_writable()
    assert await box.event_status("m0") is None
    await box.set_size_limit(None)
    assert await box.check_writable()
    assert not box.write_failed
    assert await box.add([event("m0", payload=big)]) == [True]


async def test_stats_count_states_per_destination_and_resync_the_pending_count(
    open_outbox: Any,
) -> None:
    box = await open_outbox()
    # Stored in the order received: the oldest pending event is the first
    # stored one (stats finds it by the smallest row id, from the index).
    await box.add([event("m2", at=T0 - 50)])
    await box.add([event("m1", dests=("a", "b"))])
    box.pending = 999
    stats = await box.stats(now=T0 + 10)
    assert stats["a"]["pending"] == 2 and stats["b"]["pending"] == 1
    assert stats["a"]["oldest_pending_age_seconds"] == pytest.approx(60)
    assert stats["b"]["oldest_pending_age_seconds"] == pytest.approx(10)
    assert box.pending == 3


def _corrupt(kind: str, db: Path) -> None:
    data = db.read_bytes()
    if kind == "garbage":
        db.write_bytes(bytes(range(256)) * 32)
    elif kind == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif kind == "bad header":
        db.write_bytes(b"not an sqlite db" + data[16:])


@pytest.mark.parametrize("kind", ["garbage", "truncated", "bad header"])
async def test_a_corrupt_database_is_refused_by_name_and_left_untouched(
    open_outbox: Any, tmp_path: Path, kind: str,
) -> None:
    box = await open_outbox()
    await box.add([event(f"m{i}", payload=b"x" * 2000) for i in range(100)])
    await close(box)
    db = tmp_path / "outbox.db"
    _corrupt(kind, db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(OutboxCorrupt) as err:
        await open_outbox()
    assert str(db) in str(err.value)
    assert "move it aside" in str(err.value)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.db"]


async def test_closing_leaves_the_wal_folded_into_the_database(
    open_outbox: Any, tmp_path: Path,
) -> None:
    box = await open_outbox()
    await box.add([event(f"m{i}") for i in range(100)])
    await close(box)
    wal = tmp_path / "outbox.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


# ------------------------------------------------------- plans and the WAL
def _query_plans(db: Path, statements: list[str]) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of each statement (as traced: parameters expanded)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return {sql: [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql)]
                for sql in statements}


@contextlib.contextmanager
def _traced(*cons: sqlite3.Connection | None) -> Iterator[list[str]]:
    """Every statement the connections run meanwhile (on whichever thread)."""
    seen: list[str] = []
    for con in cons:
        assert con is not None
        con.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        for con in cons:
            assert con is not None
            con.set_trace_callback(None)


_TABLE_SCAN = re.compile(r"^SCAN (deliveries|events|d|e)\b(?!.*\bINDEX\b)")


async def test_the_expiry_sweep_searches_the_age_index_not_every_pending_row(
    open_outbox: Any, tmp_path: Path,
) -> None:
    box = await open_outbox()
    await box.add([event("old", at=T0 - 8 * DAY, dests=("a", "b")), event("young")])
    with _traced(box._wcon) as seen:
        assert [e.message_id for e in await box.expire_due("a", T0, T0 - 7 * DAY)] == ["old"]
        assert [(e.destination, e.message_id)
                for e in await box.expire_due(None, T0, T0 - 7 * DAY)] == [("b", "old")]
    sweeps = [s for s in seen if s.startswith("UPDATE deliveries SET state = 'dead'")]
    assert len(sweeps) == 2
    for sql, plan in _query_plans(tmp_path / "outbox.db", sweeps).items():
        # deliveries_due (destination, ...) would visit every pending row of
        # the destination to test its age: ~0.6 s at 1,000,000 pending.
        assert plan == ["SEARCH deliveries USING INDEX deliveries_age (event_time<?)"], sql


async def test_no_outbox_statement_reads_the_whole_deliveries_table(
    open_outbox: Any, tmp_path: Path,
) -> None:
    box = await open_outbox()
    with _traced(box._wcon, box._rcon) as seen:
        await box.add([event(f"m{i}", dests=("a", "b")) for i in range(4)]
                      + [event("s", state="skipped"), event("old", at=T0 - 8 * DAY)])
        a = await box.claim("a", 2, now=T0, lease=60, oldest_event_time=T0 - 7 * DAY)
        b = await box.claim("b", 4, now=T0, lease=60, oldest_event_time=T0 - 7 * DAY)
        await box.extend_lease([a[0].id], until=T0 + 90)
        await box.mark_delivered([a[0].id], now=T0)
        await box.mark_dead([a[1].id], now=T0, reason="x", error={"code": 100})
        await box.mark_retry([b[0].id], now=T0, next_attempt_at=T0 + 5, error=None)
        await box.release([b[1].id], now=T0)
        await box.expire_due("a", T0, T0 - 7 * DAY)
        await box.next_due("b", oldest_event_time=T0 - 7 * DAY)
        await box.stats(now=T0)
        await box.stats(now=T0, final_states=False)
        await box.dead_letters(destination=None, limit=10)
        await box.dead_letters(destination="a", limit=10)
        await box.event_status("m1")
        await box.retry_dead(destination="a", message_ids=None, now=T0)
        await box.mark_dead([a[1].id], now=T0, reason="x")
        await box.purge_dead(destination=None, message_ids=["m1"])
        await box.purge(now=T0 + 30 * DAY, delivered_age=DAY, dead_age=DAY)
    statements = [s for s in seen if "deliveries" in s and not s.startswith("PRAGMA")]
    plans = _query_plans(tmp_path / "outbox.db", statements)
    scans = {sql: plan for sql, plan in plans.items() if any(_TABLE_SCAN.match(p) for p in plan)}
    assert scans == {}
    used = {p for plan in plans.values() for p in plan}
    assert "SCAN deliveries USING COVERING INDEX deliveries_final" in used  # stats
    assert "SCAN deliveries USING INDEX deliveries_due" in used  # stats (index only)


async def test_stats_count_every_state_of_several_destinations(open_outbox: Any) -> None:
    box = await open_outbox()
    await box.add([event("old", at=T0 - 100, dests=("a", "b"))])
    await box.add([event("m1", at=T0 - 10, dests=("a", "b", "c")),
                   event("s1", dests=("a", "c"), state="skipped")])
    a = {c.message_id: c.id for c in await box.claim("a", 10, now=T0, lease=60,
                                                     oldest_event_time=0)}
    await box.mark_delivered([a["old"]], now=T0)
    b = {c.message_id: c.id for c in await box.claim("b", 10, now=T0, lease=60,
                                                     oldest_event_time=0)}
    await box.mark_dead([b["m1"]], now=T0, reason="x")
    c = {c.message_id: c.id for c in await box.claim("c", 10, now=T0, lease=60,
                                                     oldest_event_time=0)}
    await box.mark_delivered([c["m1"]], now=T0)

    def entry(pending: int, delivered: int, skipped: int, dead: int,
              age: float) -> dict[str, Any]:
        return {"pending": pending, "delivered": delivered, "skipped": skipped, "dead": dead,
                "oldest_pending_age_seconds": age}

    assert await box.stats(now=T0) == {
        "a": entry(1, 1, 1, 0, 10.0),
        "b": entry(1, 0, 0, 1, 100.0),
        "c": entry(0, 1, 1, 0, 0.0),
    }
    assert await box.stats(now=T0, final_states=False) == {
        "a": {"pending": 1, "oldest_pending_age_seconds": 10.0},
        "b": {"pending": 1, "oldest_pending_age_seconds": 100.0},
    }
    assert box.pending == 2


async def test_retention_purges_the_final_rows_of_every_destination_in_chunks(
    open_outbox: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sidecar.outbox

    monkeypatch.setattr(sidecar.outbox, "PURGE_CHUNK", 4)
    box = await open_outbox()
    await box.add([event(f"m{i}", dests=("a", "b", "c")) for i in range(5)])
    for dest in ("a", "b", "c"):
        ids = [c.id for c in await box.claim(dest, 10, now=T0, lease=60, oldest_event_time=0)]
        if dest == "c":
            await box.mark_dead(ids, now=T0, reason="x")
        else:
            await box.mark_delivered(ids, now=T0)
    assert await box.purge(now=T0 + DAY + 1, delivered_age=DAY, dead_age=7 * DAY) == 10
    assert await box.stats(now=T0) == {"c": {"pending": 0, "delivered": 0, "skipped": 0,
                                             "dead": 5, "oldest_pending_age_seconds": 0.0}}
    assert await box.purge(now=T0 + 8 * DAY, delivered_age=DAY, dead_age=7 * DAY) == 5
    assert await box.stats(now=T0) == {}
    assert await box.event_status("m0") is None


def _sync_levels(statements: list[str], start: str) -> list[tuple[str, str]]:
    """(first statement, synchronous level) of each write transaction in a trace."""
    level, out, current = start, [], None
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            level = sql.split("=", 1)[1]
        elif sql == "BEGIN IMMEDIATE":
            current = level
        elif current is not None and not sql.startswith(("PRAGMA", "COMMIT", "ROLLBACK")):
            out.append((sql, current))
            current = None
    return out


@pytest.mark.parametrize("configured", ["FULL", "NORMAL"])
async def test_only_the_ingest_commit_and_the_operators_verbs_are_fsynced(
    open_outbox: Any, monkeypatch: pytest.MonkeyPatch, configured: str,
) -> None:
    seen_in_insert: list[int] = []
    insert_rows = Outbox._insert_rows

    def spy(con: sqlite3.Connection, groups: Any) -> tuple[list[list[bool]], int]:
        seen_in_insert.append(con.execute("PRAGMA synchronous").fetchone()[0])
        return insert_rows(con, groups)

    monkeypatch.setattr(Outbox, "_insert_rows", staticmethod(spy))
    box = await open_outbox(synchronous=configured)

    async def level() -> int:
        return int(await box._on_writer(
            lambda: box._wcon.execute("PRAGMA synchronous").fetchone()[0]))

    assert await level() == 1  # NORMAL between writes, whatever is configured
    with _traced(box._wcon) as seen:
        await box.add([event("m1"), event("m2")])
        claimed = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
        await box.mark_delivered([claimed[0].id], now=T0)
        await box.mark_dead([claimed[1].id], now=T0, reason="x")
        await box.expire_due(None, T0, 0)
        await box.purge(now=T0, delivered_age=DAY, dead_age=DAY)
        await box.retry_dead(destination=None, message_ids=None, now=T0)
    assert await level() == 1
    assert seen_in_insert == [2 if configured == "FULL" else 1]
    durable = "FULL" if configured == "FULL" else "NORMAL"
    levels = _sync_levels(seen, "NORMAL")
    assert len(levels) >= 7
    for first, sync in levels:
        # The commit behind 200, and the operator's retry of dead letters.
        wanted = first.startswith(("SELECT message_id FROM events",
                                   "UPDATE deliveries SET state = 'pending'"))
        assert sync == (durable if wanted else "NORMAL"), first


async def test_the_writer_keeps_the_wal_bounded_under_a_sustained_drain(
    open_outbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sidecar.outbox

    bound = 256 * 1024
    monkeypatch.setattr(sidecar.outbox, "WAL_CHECKPOINT_BYTES", bound)
    box = await open_outbox()
    wal = tmp_path / "outbox.db-wal"
    payload = b'{"event_name":"PageView","pad":"' + b"x" * 1500 + b'"}'
    largest = written = 0
    for r in range(60):
        await box.add([event(f"m{r}-{i}", payload=payload) for i in range(40)])
        largest = max(largest, wal.stat().st_size)
        claimed = await box.claim("a", 40, now=T0, lease=60, oldest_event_time=0)
        largest = max(largest, wal.stat().st_size)
        await box.mark_delivered([c.id for c in claimed], now=T0)
        largest = max(largest, wal.stat().st_size)
        written += 40 * len(payload)
    assert written > 12 * bound  # without checkpoints the WAL would hold all of it, and more
    assert box.wal_checkpoints >= 10
    # Past the line, the WAL grows only by what the writer commits while the
    # reader thread copies it, and is then emptied.
    assert largest < 6 * bound


async def test_a_reader_in_the_way_of_the_wal_checkpoint_delays_it_without_a_retry_storm(
    open_outbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sidecar.outbox

    bound = 128 * 1024
    monkeypatch.setattr(sidecar.outbox, "WAL_CHECKPOINT_BYTES", bound)
    monkeypatch.setattr(sidecar.outbox, "CHECKPOINT_BUSY_MS", 10)
    box = await open_outbox()
    payload = b'{"event_name":"PageView","pad":"' + b"x" * 1500 + b'"}'
    await box.add([event("first")])
    wal = tmp_path / "outbox.db-wal"
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)) as cli:
        cli.execute("BEGIN")
        cli.execute("SELECT COUNT(*) FROM events").fetchone()  # holds an old snapshot
        for r in range(30):
            await box.add([event(f"m{r}-{i}", payload=payload) for i in range(20)])
        held = box.wal_checkpoints
        # Attempts spaced wider (32, 64, then every 128 KiB of the ~1.5 MiB
        # these 30 commits write), not one per commit.
        assert 1 <= held <= 20
        assert wal.stat().st_size > bound
        cli.execute("COMMIT")
    for r in range(10):
        await box.add([event(f"n{r}-{i}", payload=payload) for i in range(20)])
    # The last checkpoint may still be on its way (copy on the reader thread,
    # then the truncation queued on the writer): give it a moment, no more.
    for _ in range(100):
        if box.wal_checkpoints > held and wal.stat().st_size < 2 * bound:
            break
        await asyncio.sleep(0.02)
    assert box.wal_checkpoints > held
    assert wal.stat().st_size < 2 * bound


async def test_an_outbox_from_before_migration_4_moves_its_payloads_and_drains_them(
    open_outbox: Any, tmp_path: Path,
) -> None:
    # Build the file as the previous release left it: migrations 1-3 only,
    # a pending row and a dead letter with their payloads in deliveries.
    path = tmp_path / "outbox.db"
    database.create_file(path)
    con = sqlite3.connect(path, isolation_level=None)
    for version, _name, sql in database.migrations():
        if version <= 3:
            con.executescript(sql)
    con.execute("CREATE TABLE schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    con.executemany("INSERT INTO schema_migrations VALUES (?, ?, 0)",
                    [(v, n) for v, n, _ in database.migrations() if v <= 3])
    con.executemany("INSERT INTO events (id, message_id, type, received_at, event_time) "
                    "VALUES (?, ?, 'track', ?, ?)", [(1, "old-1", T0, int(T0)),
                                                     (2, "old-2", T0, int(T0))])
    con.executemany("INSERT INTO deliveries (event_id, destination, state, payload, event_time, "
                    "next_attempt_at, updated_at) VALUES (?, 'a', ?, ?, ?, ?, ?)",
                    [(1, "pending", b'{"n":1}', int(T0), T0, T0),
                     (2, "dead", b'{"n":2}', int(T0), T0, T0)])
    con.close()

    box = await open_outbox()
    (claimed,) = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert (claimed.message_id, claimed.payload) == ("old-1", b'{"n":1}')
    assert await box.retry_dead(destination=None, message_ids=None, now=T0) == 1
    again = await box.claim("a", 10, now=T0, lease=60, oldest_event_time=0)
    assert [(c.message_id, c.payload) for c in again] == [("old-2", b'{"n":2}')]
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM deliveries WHERE payload IS NOT NULL"
                             ).fetchone()[0] == 0
