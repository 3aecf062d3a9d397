"""kill -9 and bad files: the real ``capi-sidecar serve`` command in a subprocess.

A SIGKILL can land anywhere; what was acknowledged must survive it, what was
in flight must be sent again with the same event_id, and a damaged database
must stop the start loudly without being touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.outbox import NewDelivery, NewEvent, Outbox
from sidecar.sandbox import Fault, SandboxState
from tests.conftest import PIXEL, TOKEN
from tests.invariants import (
    SidecarProcess,
    assert_no_loss,
    batch,
    delivery_rows,
    eventually,
    hammer,
    post_batch,
    stored_message_ids,
    wait_until_settled,
)


@pytest.fixture
def sidecar_process(tmp_path: Path, graph: tuple[str, SandboxState]) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(db_path=tmp_path / "outbox.db", graph_url=graph[0], token=TOKEN,
                          pixel_id=PIXEL, log_path=tmp_path / "sidecar.log")
    yield proc
    proc.stop()


async def test_a_sidecar_killed_mid_delivery_redelivers_with_the_same_event_id_after_restart(
    graph: tuple[str, SandboxState], session: aiohttp.ClientSession,
    sidecar_process: SidecarProcess,
) -> None:
    _, state = graph
    # Meta holds the first request, then drops it: the kill lands while it is in flight.
    state.inject(Fault(delay_seconds=30, drop_connection=True, times=1))
    await sidecar_process.start_ready(session)
    messages = batch(10)
    ids = [m["messageId"] for m in messages]
    assert (await post_batch(session, sidecar_process.url, messages)).status == 200
    await eventually(lambda: len(state.faults) == 0, what="the request in flight")
    rows = delivery_rows(sidecar_process.db_path)
    assert {r.leased for r in rows.values()} == {1}
    sidecar_process.kill()

    await sidecar_process.start_ready(session)
    await wait_until_settled(sidecar_process.db_path)
    settled = assert_no_loss(sidecar_process.db_path, ids, {"default": state})
    assert settled.delivered["default"] == set(ids)
    assert sorted(e["event_id"] for e in state.events) == sorted(ids)
    assert {r.attempts for r in delivery_rows(sidecar_process.db_path).values()} == {2}


@pytest.mark.parametrize("kill_after", [150, 600])
async def test_every_event_acknowledged_before_a_kill_minus_nine_is_stored_and_delivered(
    graph: tuple[str, SandboxState], session: aiohttp.ClientSession,
    sidecar_process: SidecarProcess, kill_after: int,
) -> None:
    _, state = graph
    await sidecar_process.start_ready(session)
    acked: set[str] = set()
    clients = [asyncio.create_task(hammer(session, sidecar_process.url, acked))
               for _ in range(8)]
    await eventually(lambda: len(acked) >= kill_after, timeout=20, what="acknowledgements")
    sidecar_process.kill()
    await asyncio.wait_for(asyncio.gather(*clients), 10)
    await _stored_then_delivered_after_restart(sidecar_process, session, acked, state)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:  # a zombie has exited; only its parent's wait is missing
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_a_kill_while_a_worker_maps_batches_loses_nothing_and_leaves_no_worker_behind(
    graph: tuple[str, SandboxState], session: aiohttp.ClientSession,
    sidecar_process: SidecarProcess,
) -> None:
    _, state = graph
    await sidecar_process.start_ready(session)
    assert sidecar_process.proc is not None
    acked: set[str] = set()
    # 60-message batches are over 8 KiB: the mapping worker maps them.
    clients = [asyncio.create_task(hammer(session, sidecar_process.url, acked, size=60))
               for _ in range(4)]
    await eventually(lambda: len(acked) >= 1200, timeout=30, what="acknowledgements")
    workers = _children(sidecar_process.proc.pid)
    assert workers, "no mapping worker was running"
    sidecar_process.kill()
    await asyncio.wait_for(asyncio.gather(*clients), 10)
    # The worker reads end of input on its pipe and exits on its own.
    await eventually(lambda: all(_gone(w) for w in workers), timeout=10, what="worker exit")
    await _stored_then_delivered_after_restart(sidecar_process, session, acked, state)


async def _stored_then_delivered_after_restart(
    sidecar_process: SidecarProcess, session: aiohttp.ClientSession, acked: set[str],
    state: SandboxState,
) -> None:
    """After a kill: every acknowledged event is on disk; after a restart, delivered."""
    missing = acked - stored_message_ids(sidecar_process.db_path)
    assert not missing, f"{len(missing)} acknowledged events lost by the kill"
    await sidecar_process.start_ready(session)
    await wait_until_settled(sidecar_process.db_path, timeout=30)
    settled = assert_no_loss(sidecar_process.db_path, acked, {"default": state})
    assert acked <= settled.delivered["default"]


def _run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad header"])
async def test_a_corrupt_database_stops_the_start_with_advice_and_is_left_as_evidence(
    sidecar_process: SidecarProcess, damage: str,
) -> None:
    db = sidecar_process.db_path
    outbox = Outbox(db)
    await outbox.open()
    await outbox.add([NewEvent(f"m{i}", "page", "PageView", 0.0, 0, None,
                               (NewDelivery("default", "pending", b"x" * 500),))
                      for i in range(300)])
    await outbox.close()
    data = db.read_bytes()
    if damage == "garbage":
        db.write_bytes(bytes(range(256)) * 64)
    elif damage == "truncated":
        db.write_bytes(data[: len(data) // 2])
    else:
        db.write_bytes(b"definitely not SQLite" + data[21:])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    files_before = sorted(p.name for p in db.parent.iterdir())

    for _ in range(2):  # a restart loop must not wear the evidence away either
        result = await asyncio.to_thread(_run_serve, sidecar_process.env())
        assert result.returncode == 1, result.stderr
        assert str(db) in result.stderr
        assert "move it aside" in result.stderr
        assert "Traceback" not in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in db.parent.iterdir()) == files_before
