"""The rows the outbox stores and hands out, as plain Python objects.

Kept apart from :mod:`sidecar.outbox` so that a mapping worker
(:mod:`sidecar.mapworker`), which builds ``NewEvent`` rows but never opens
the database, does not import SQLite, asyncio and the thread pools with them
(about 10 MiB of its memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.database import State

# NewDelivery, NewEvent and Claimed are made several times per event, so they
# are plain slotted dataclasses: constructing a frozen one costs ~4x as much
# (0.83 against 0.19 µs, its __init__ goes through object.__setattr__).
# They are immutable by convention: nothing assigns to their fields once built.


@dataclass(slots=True)
class NewDelivery:
    """One destination's share of an accepted message (not to be modified once built)."""

    destination: str
    state: State
    payload: bytes | None = None
    reason: str | None = None
    coverage: int = 0  # user_data fields present (telemetry.coverage_mask)


@dataclass(slots=True)
class NewEvent:
    """An accepted message, mapped and ready to store (not to be modified once built)."""

    message_id: str
    type: str
    event_name: str | None
    received_at: float
    event_time: int
    traceparent: str | None
    deliveries: tuple[NewDelivery, ...]


@dataclass(slots=True)
class Claimed:
    """A delivery row leased to the drainer (not to be modified once built)."""

    id: int
    message_id: str
    payload: bytes
    attempts: int
    traceparent: str | None
    event_name: str | None
    coverage: int = 0  # user_data fields present (telemetry.coverage_mask)
