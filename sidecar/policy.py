"""Retry policy: how a Graph API answer is classified and when to try again.

Pure functions only: the clock and the random source are passed in, so the
policy is tested exhaustively without sleeping. Classification reads Graph's
``code``, ``error_subcode`` and ``is_transient``, never the (localised)
message text.

    Success     2xx: every event in the request is delivered
    Transient   retry the same batch later (backoff with full jitter)
    Invalid     Meta rejected the payload: bisect a batch, dead-letter a single event
    Credentials the token, app or pixel is wrong: pause the destination, keep events

The order of the rules, first match wins (docs/delivery.md has the table):

1. 2xx                                              success
2. ``is_transient: true``, HTTP 429                  transient
3. no Graph error body (network, proxy, 5xx page)    transient
4. codes 1, 2, 4, 17, 32, 341, 368, 613, 5000,
   80000-80014, any negative code                    transient
5. codes 3, 10, 102, 104, 190, 200-299, 100/33        credentials
6. code 100 (subcodes 2804xxx and the rest)          invalid
7. any other code on a 5xx                           transient
8. any other code on a 4xx                           credentials

Rule 8 is our choice where the spec is silent: an unknown code says nothing
about one event (it is typically a wrong API version or a retired feature),
and treating it as invalid would bisect every batch and dead-letter every
event. Pausing keeps the events and tells the operator, loudly.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

# Graph codes that mean "try again later" (Meta's error reference; throttling
# and temporary downtime).
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 368, 613, 5000, *range(80000, 80015)})
# Codes that mean the credentials or permissions are wrong: nothing about the
# events, so keep them and pause the destination.
CREDENTIAL_CODES = frozenset({3, 10, 102, 104, 190, *range(200, 300)})
# 100/33: the pixel does not exist or the token cannot see it.
OBJECT_ACCESS_SUBCODE = 33
# Meta's throttling windows are up to an hour (codes 17, 613); a longer
# Retry-After is more likely a misconfigured proxy than a real instruction.
MAX_RETRY_AFTER = 3600.0


class Verdict(enum.Enum):
    SUCCESS = "success"
    TRANSIENT = "transient"
    INVALID = "invalid"
    CREDENTIALS = "credentials"


@dataclass(frozen=True, slots=True)
class GraphError:
    """What Meta said about a failed request, safe to store and show."""

    code: int | None
    subcode: int | None
    message: str
    fbtrace_id: str | None
    http_status: int | None
    is_transient: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "subcode": self.subcode,
            "message": self.message,
            "fbtrace_id": self.fbtrace_id,
            "http_status": self.http_status,
        }


@dataclass(frozen=True, slots=True)
class Classified:
    verdict: Verdict
    error: GraphError | None = None
    retry_after: float | None = None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def parse_graph_error(status: int, body: Any) -> GraphError:
    """Pull code, subcode, message and fbtrace_id out of a Graph error body."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return GraphError(None, None, f"HTTP {status} without a Graph error body", None, status)
    message = str(err.get("error_user_msg") or err.get("message") or "")[:500]
    return GraphError(
        code=_int(err.get("code")),
        subcode=_int(err.get("error_subcode")),
        message=message,
        fbtrace_id=str(err["fbtrace_id"]) if err.get("fbtrace_id") else None,
        http_status=status,
        is_transient=err.get("is_transient") is True,
    )


def classify(status: int, body: Any, retry_after: float | None = None) -> Classified:
    """Classify one Graph API answer (``body`` is the parsed JSON, or None)."""
    if 200 <= status < 300:
        return Classified(Verdict.SUCCESS)
    error = parse_graph_error(status, body)
    return Classified(_verdict(status, error), error, retry_after)


def _verdict(status: int, error: GraphError) -> Verdict:
    code = error.code
    if error.is_transient or status == 429 or (status >= 500 and code is None):
        return Verdict.TRANSIENT
    if code is None:
        # A 4xx without a Graph body came from something in between (a proxy):
        # nothing says the events are bad, so do not lose them.
        return Verdict.TRANSIENT
    if code in TRANSIENT_CODES or code < 0:
        return Verdict.TRANSIENT
    if code in CREDENTIAL_CODES or (code == 100 and error.subcode == OBJECT_ACCESS_SUBCODE):
        return Verdict.CREDENTIALS
    if code == 100:
        return Verdict.INVALID
    if status >= 500:
        return Verdict.TRANSIENT
    # An unknown code on a 4xx is about the request or the destination, not one
    # event (rule 8 in the module docstring): keep the events, pause loudly.
    return Verdict.CREDENTIALS


def network_error(kind: str) -> Classified:
    """A request that got no answer: timeouts, resets, refused connections."""
    return Classified(Verdict.TRANSIENT, GraphError(None, None, kind, None, None))


def backoff(attempts: int, *, base: float, cap: float, rand: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(n-1))]."""
    exp = min(cap, base * (2 ** min(max(attempts - 1, 0), 30)))
    return rand.uniform(0, exp)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3).

    Accepts delta-seconds (a decimal fraction too, leniently) and an HTTP-date
    (a date without a zone is read as UTC); a date in the past means "now".
    The wait is capped at ``MAX_RETRY_AFTER``; a value that cannot be read is
    ignored (``None``), so plain backoff applies.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def next_attempt(
    attempts: int, *, now: float, base: float, cap: float, rand: random.Random,
    retry_after: float | None = None,
) -> float:
    """When a transiently failed delivery is due again."""
    delay = backoff(attempts, base=base, cap=cap, rand=rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + delay
