"""Opening the outbox's SQLite file: the layer below ``outbox``.

Owns the connection factory and its pragmas, creating the file with mode
``0600``, the read-only integrity check that refuses a damaged file before
anything may write to it (and the message that tells the operator what to do),
the migration runner over the numbered SQL files of the ``sidecar.migrations``
package, and the delivery states the schema allows. Every ``sqlite3`` error
met while opening becomes :class:`~sidecar.errors.OutboxCorrupt` or
:class:`~sidecar.errors.OutboxError` here. docs/outbox.md has the design.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from sidecar.errors import OutboxCorrupt, OutboxError

log = logging.getLogger(__name__)

# The values the CHECK constraint on deliveries.state allows.
State = Literal["pending", "delivered", "skipped", "dead"]
FINAL_STATES: tuple[State, ...] = ("delivered", "skipped", "dead")
# How long a statement waits for a lock another connection holds.
BUSY_TIMEOUT_MS = 5000


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection with the pragmas every outbox connection shares."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # WAL: readers never block the writer and a commit is one append + fsync.
    con.execute("PRAGMA journal_mode=WAL")
    # FULL fsyncs the WAL on every commit, so an acknowledged event survives
    # power loss; group commit keeps that affordable (docs/delivery.md). The
    # outbox relaxes its writer to NORMAL for every commit but the ingest's.
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return con


def open_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """The writer's connection: the file created or checked, then migrated."""
    if path.exists():
        quick_check(path)
    else:
        create_file(path)
    with translated_errors(path):
        con = connect(path, synchronous)
        # Never checkpoint inside a commit: a commit's latency stays one WAL
        # append. Housekeeping runs passive checkpoints on the reader thread,
        # and the writer truncates the WAL as a job of its own between
        # transactions once it grows large (Outbox._checkpoint_wal).
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("PRAGMA journal_size_limit=67108864")
        migrate(con)
    return con


def open_reader(path: Path, synchronous: str) -> sqlite3.Connection:
    """The reader's connection (operator queries, checkpoints): it cannot write."""
    con = connect(path, synchronous)
    con.execute("PRAGMA query_only=ON")
    return con


def create_file(path: Path) -> None:
    """Create an empty database file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def quick_check(path: Path) -> None:
    """Check the file as it lies on disk before anything may write to it.

    ``immutable=1`` opens it without locks, ``-wal`` or ``-shm`` files, so a
    damaged database is left exactly as found (evidence, not a crash loop
    that rewrites it). The main file alone is consistent in WAL mode: pages
    reach it only through checkpoints, and SQLite checksums WAL frames.
    """
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    with translated_errors(path):
        con = sqlite3.connect(uri, uri=True)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    if row is None or row[0] != "ok":
        raise OutboxCorrupt(corrupt_message(path, str(row and row[0])))


@contextlib.contextmanager
def translated_errors(path: Path) -> Iterator[None]:
    """Turn a ``sqlite3.DatabaseError`` while opening ``path`` into our errors."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise OutboxCorrupt(corrupt_message(path, str(err))) from err
        raise OutboxError(f"cannot open the outbox database {path}: {err}") from err


def corrupt_message(path: Path, detail: str) -> str:
    return (
        f"outbox database {path} is unreadable ({detail}). It was left untouched "
        f"as evidence: move it aside (e.g. mv {path} {path}.corrupt) and start "
        "again to begin with an empty outbox, or restore it from a backup."
    )


# ---------------------------------------------------------------- migrations
def migrate(con: sqlite3.Connection) -> None:
    """Apply every migration not yet recorded in ``schema_migrations``."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations")}
    for version, name, sql in migrations():
        if version in done:
            continue
        # Each migration in its own transaction: a failure leaves the
        # previous version intact.
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time())
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.info("applied migration %s", name)


def migrations() -> list[tuple[int, str, str]]:
    """Numbered SQL files shipped as the ``sidecar.migrations`` package."""
    try:
        root: Any = importlib.resources.files("sidecar.migrations")
        entries = list(root.iterdir())
    except ModuleNotFoundError:  # running from a source tree without install
        entries = list((Path(__file__).resolve().parent.parent / "migrations").iterdir())
    found = []
    for entry in entries:
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (no semicolons inside literals here)."""
    return [s.strip() for s in sqlite3_complete_split(sql) if s.strip()]


def sqlite3_complete_split(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf)
            buf = ""
    if buf.strip():
        out.append(buf)
    return out
