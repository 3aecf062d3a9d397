"""The server's side of the mapping workers (:mod:`sidecar.mapworker`).

Owns starting the worker processes, handing them request bodies, matching
replies to requests, and giving up cleanly: :meth:`MappingPool.prepare`
returns ``None`` whenever no worker can take a body (none configured, not
started yet, busy, crashed, or too slow), and ingest then maps the body
in-process as it would without workers. A worker that dies loses nothing:
its bodies have not been stored yet, and each is mapped in-process instead.

Workers start on the first body offered, not with the server, so a sidecar
that only ever receives single events never pays for them (about 30 MiB of
memory each). A worker that dies is started again on a later body, at most
once per ``RESTART_SECONDS``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import marshal
import sys
import time
from dataclasses import dataclass, field

from sidecar.mapworker import HEADER
from sidecar.messages import BadRequest, Prepared, from_wire

log = logging.getLogger(__name__)

# Bodies a worker may hold at once before the server maps the next one itself.
MAX_QUEUED = 4
# A reply later than this means the worker is stuck: it is killed.
REPLY_TIMEOUT_SECONDS = 10.0
RESTART_SECONDS = 1.0


class WorkerGone(Exception):
    """The worker died or stalled before it answered."""


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    waiting: collections.deque[asyncio.Future[tuple[object, ...]]] = field(
        default_factory=collections.deque)
    reader: asyncio.Task[None] | None = None
    alive: bool = True


class MappingPool:
    """Up to ``size`` worker processes that parse, check and map batch bodies."""

    def __init__(self, size: int, config: bytes) -> None:
        self.size = size
        self._config = config
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[None] | None = None
        self._last_start = -RESTART_SECONDS
        self._closed = False
        self.offloaded = 0  # bodies mapped by a worker (tests, diagnostics)
        self.fallbacks = 0  # bodies a worker failed, mapped in-process instead

    # --------------------------------------------------------------- life
    def _maybe_start(self) -> None:
        alive = [w for w in self._workers if w.alive]
        if (self._closed or len(alive) >= self.size or self._starting is not None
                or time.monotonic() - self._last_start < RESTART_SECONDS):
            return
        self._last_start = time.monotonic()
        self._starting = asyncio.create_task(self._start(self.size - len(alive)))

    async def _start(self, count: int) -> None:
        try:
            for _ in range(count):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sidecar.mapworker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )
                assert proc.stdin is not None
                proc.stdin.write(HEADER.pack(len(self._config)) + self._config)
                worker = _Worker(proc)
                worker.reader = asyncio.create_task(self._read(worker))
                self._workers = [w for w in self._workers if w.alive] + [worker]
                log.info("mapping worker started (pid %d)", proc.pid)
        except Exception:
            log.exception("could not start a mapping worker; mapping in-process")
        finally:
            self._starting = None

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        for worker in self._workers:
            await self._stop(worker)
        self._workers = []

    async def _stop(self, worker: _Worker) -> None:
        worker.alive = False
        proc = worker.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if worker.reader is not None:
            worker.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.reader
        self._fail(worker)

    def _fail(self, worker: _Worker) -> None:
        worker.alive = False
        while worker.waiting:
            future = worker.waiting.popleft()
            if not future.done():
                future.set_exception(WorkerGone("mapping worker exited"))

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.proc.stdout
        assert stdout is not None
        try:
            while True:
                head = await stdout.readexactly(HEADER.size)
                (size,) = HEADER.unpack(head)
                reply = marshal.loads(await stdout.readexactly(size))  # noqa: S302 - our child
                future = worker.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError, EOFError):
            pass
        if not self._closed:
            log.error("mapping worker (pid %d) exited; its bodies are mapped in-process",
                      worker.proc.pid)
        self._fail(worker)

    # -------------------------------------------------------------- work
    async def prepare(
        self, endpoint: str, body: bytes, *, now: float, traceparent: str | None
    ) -> Prepared | None:
        """The body mapped by a worker; ``None`` when ingest must map it itself.

        :class:`~sidecar.messages.BadRequest` when the body is unusable whole.
        """
        worker = self._pick()
        if worker is None:
            return None
        assert worker.proc.stdin is not None
        payload = marshal.dumps((endpoint, body, now, traceparent))
        future: asyncio.Future[tuple[object, ...]] = asyncio.get_running_loop().create_future()
        worker.waiting.append(future)
        try:
            worker.proc.stdin.write(HEADER.pack(len(payload)) + payload)
            reply = await asyncio.wait_for(asyncio.shield(future), REPLY_TIMEOUT_SECONDS)
        except TimeoutError:
            log.error("mapping worker (pid %d) did not answer in %.0f s; stopping it",
                      worker.proc.pid, REPLY_TIMEOUT_SECONDS)
            worker.alive = False
            worker.proc.kill()
            future.cancel()  # nobody waits for it any more
            self.fallbacks += 1
            return None
        except (WorkerGone, ConnectionError, RuntimeError):
            self.fallbacks += 1
            return None
        if reply[0] == 0:
            self.offloaded += 1
            return from_wire(reply[1])  # type: ignore[arg-type]
        if reply[0] == 1:
            raise BadRequest(int(reply[1]), str(reply[2]))  # type: ignore[call-overload]
        log.warning("mapping worker could not map a body (%s); mapping it in-process", reply[1])
        self.fallbacks += 1
        return None

    def _pick(self) -> _Worker | None:
        alive = [w for w in self._workers
                 if w.alive and w.proc.stdin is not None and not w.proc.stdin.is_closing()]
        if len(alive) < self.size:
            self._maybe_start()
        if not alive:
            return None
        best = min(alive, key=lambda w: len(w.waiting))
        return best if len(best.waiting) < MAX_QUEUED else None
