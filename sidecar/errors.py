"""The project's error types, in one tree.

    SidecarError                  base of everything raised on purpose
    ├── ConfigError               bad configuration; ``problems`` holds one line each
    ├── OutboxError               the SQLite outbox failed
    │   ├── OutboxFull            over the configured cap: answer 503, retry later
    │   ├── OutboxWriteError      the disk write failed (disk full, I/O): answer 503
    │   └── OutboxCorrupt         the database file is unreadable; start-up stops
    └── DeliveryError             a request to the Graph API failed (see delivery.py)

Foreign errors (sqlite3, aiohttp, pydantic) are translated into these at the
module boundary that meets them, with ``raise ... from err``.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of all errors the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The configuration is unusable; each problem is one line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class OutboxError(SidecarError):
    """The outbox could not do what was asked."""


class OutboxFull(OutboxError):
    """The outbox holds more pending deliveries than its cap."""


class OutboxWriteError(OutboxError):
    """A write to the database failed (disk full, I/O error, size cap)."""


class OutboxCorrupt(OutboxError):
    """The database file cannot be opened or fails its integrity check."""


class DeliveryError(SidecarError):
    """A request to the Graph API failed; ``delivery`` classifies it."""
