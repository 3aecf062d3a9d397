"""Mapping: one Segment-style message → one Meta server event (SPEC §3).

Owns the translation contract and its public interface: the event-name table
and the events filter, the common fields (``event_time``, ``event_id``,
``action_source``, ``event_source_url``), the outcome types, and validation of
the property mappings that point the canonical source paths at an operator's
own data model. It assembles the payload from the stages it delegates to:
:mod:`sidecar.paths` (where each field is read), :mod:`sidecar.user_data`
(hashed through :mod:`sidecar.normalize`, enriched through :mod:`sidecar.geo`)
and :mod:`sidecar.custom_data` (track calls). ``docs/mapping.md`` is the
human-readable form of these modules.

Everything here is pure: the clock is passed in, nothing is read from the
environment or from files, and the incoming message is never modified. The
payload shares unmodified nested values (product lists, say) with the message
instead of copying them, so callers must treat both as read-only.

A :class:`Mapper` does all configuration work once (paths, filter, content-id
order, phone rule), so :meth:`Mapper.map` on the ingest hot path only walks
the message.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sidecar import app_data
from sidecar.custom_data import CustomDataBuilder
from sidecar.paths import CANONICAL_PATHS, PRODUCT_PREFIX, first_text, resolve
from sidecar.user_data import UserDataBuilder

if TYPE_CHECKING:
    from sidecar.config import DestinationSettings
    from sidecar.geo import GeoLookup

__all__ = [
    "CANONICAL_PATHS",
    "MAX_EVENT_NAME",
    "Dead",
    "Mapped",
    "Mapper",
    "Outcome",
    "Skipped",
    "validate_property_mappings",
]

MAX_EVENT_NAME = 50

_EVENT_NAMES = {
    "checkout started": "InitiateCheckout",
    "order completed": "Purchase",
    "product added": "AddToCart",
    "product viewed": "ViewContent",
    "products searched": "Search",
    "product clicked": "ViewContent",
    "subscription created": "Subscribe",
}
_IGNORED_TYPES = frozenset({"identify", "group", "alias"})
_PAGE_TYPES = frozenset({"page", "screen"})
_TARGET = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+)*")


@dataclass(frozen=True, slots=True)
class Mapped:
    """The message maps to one Meta server event (an element of ``data``)."""

    event_name: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to send, on purpose: filtered out, or an identify/group/alias call."""

    event_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dead:
    """The message can never be sent (a custom name over 50 characters, say)."""

    event_name: str
    reason: str


Outcome = Mapped | Skipped | Dead


class Mapper:
    """Maps messages for one destination; build once, call :meth:`map` often."""

    def __init__(self, dest: DestinationSettings, geo: GeoLookup | None = None) -> None:
        paths = resolve(dest.property_mappings, dest.phone_field)
        self._action_source: str = dest.action_source
        self._filter = frozenset(name.strip().casefold() for name in dest.events_filter)
        self._time = paths["timestamp"] + paths["originalTimestamp"]
        self._page_url = paths["context.page.url"]
        self._page_url_fallback = paths["properties.url"]
        self._user_data = UserDataBuilder(paths, dest, geo)
        self._custom_data = CustomDataBuilder(paths, dest)

    def map(self, message: Mapping[str, Any], *, received_at: float, now: float) -> Outcome:
        """Map one message; ``received_at`` and ``now`` are Unix seconds."""
        named = self._name(message)
        if not isinstance(named, tuple):
            return named
        kind, event_name = named
        payload: dict[str, Any] = {
            "event_name": event_name,
            "event_time": self._event_time(message, received_at, now),
            "event_id": str(message.get("messageId")),
            "action_source": self._action_source,
        }
        url = self._source_url(message, kind)
        if url is not None:
            payload["event_source_url"] = url
        payload["user_data"] = self._user_data.build(message)
        if kind == "track":
            payload["custom_data"] = self._custom_data.build(message)
        if self._action_source == "app":
            payload["app_data"] = app_data.build(message.get("context"))
        return Mapped(event_name, payload)  # positional: keywords cost ~0.1 µs here

    # --- event name, filter, common fields --------------------------------

    def _name(self, message: Mapping[str, Any]) -> tuple[str, str] | Skipped | Dead:
        kind = message.get("type")
        if not isinstance(kind, str):
            return Dead(event_name=str(kind), reason=f"unsupported message type {kind!r}")
        if kind == "track":
            incoming = message.get("event")
            if not isinstance(incoming, str) or not incoming.strip():
                return Dead(event_name="track", reason="track call without an event name")
            event_name = _EVENT_NAMES.get(incoming.strip().lower(), incoming)
        elif kind in _PAGE_TYPES:
            incoming, event_name = kind, "PageView"
        elif kind in _IGNORED_TYPES:
            return Skipped(event_name=kind, reason=f"{kind} calls are not sent to Meta")
        else:
            return Dead(event_name=str(kind), reason=f"unsupported message type {kind!r}")
        if self._filter and not (
            incoming.strip().casefold() in self._filter or event_name.casefold() in self._filter
        ):
            return Skipped(event_name=event_name, reason=_filtered(incoming, event_name))
        if len(event_name) > MAX_EVENT_NAME:
            return Dead(event_name=event_name, reason=_too_long(event_name))
        return kind, event_name

    def _event_time(self, message: Mapping[str, Any], received_at: float, now: float) -> int:
        for get in self._time:
            seconds = _seconds(get(message))
            if seconds is not None:
                return int(min(seconds, now))
        return int(min(received_at, now))

    def _source_url(self, message: Mapping[str, Any], kind: str) -> str | None:
        url = first_text(message, self._page_url)
        if url is None and kind == "page":
            url = first_text(message, self._page_url_fallback)
        return url


# --- property mappings ------------------------------------------------------


def validate_property_mappings(mappings: Mapping[str, str]) -> list[str]:
    """One line per unusable entry of ``property_mappings``; ``[]`` when fine."""
    problems: list[str] = []
    for source, target in mappings.items():
        problem = _mapping_problem(source, target)
        if problem is not None:
            problems.append(f"property_mappings: {problem}")
    return problems


def _mapping_problem(source: Any, target: Any) -> str | None:
    if not isinstance(source, str) or not isinstance(target, str):
        return f"{source!r}: both sides must be paths (strings)"
    if source == "messageId":
        return "messageId cannot be remapped: event_id is always the messageId"
    if source not in CANONICAL_PATHS:
        close = difflib.get_close_matches(source, sorted(CANONICAL_PATHS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see docs/mapping.md for the list"
        return f"unknown canonical path {source!r} ({hint})"
    if not _TARGET.fullmatch(target) or any(
        part != part.strip() or not part.strip() for part in target.split(".")
    ):
        relative = source.startswith(PRODUCT_PREFIX)
        example = (
            "variant_sku (relative to each product)" if relative else "properties.customer.email"
        )
        return f"{source}: target {target!r} is not a dot path such as {example}"
    return None


# --- event time and outcome reasons -----------------------------------------


def _seconds(value: Any) -> float | None:
    """Unix seconds from an ISO-8601 string or a number (seconds, or
    milliseconds when it is too large to be seconds)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value / 1000 if value > 100_000_000_000 else float(value)
    return None


def _filtered(incoming: str, event_name: str) -> str:
    return f"event {incoming!r} (Meta {event_name!r}) is not in the events filter"


def _too_long(event_name: str) -> str:
    return (
        f"custom event name is {len(event_name)} characters long; "
        f"Meta accepts at most {MAX_EVENT_NAME}"
    )
