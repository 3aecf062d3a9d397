"""Fault injection for the sandbox, and the Graph API error envelope it answers with.

Owns :class:`Fault` (one way the sandbox is told to misbehave), :class:`FaultQueue`
(the faults waiting to fire, in order of injection) and :class:`GraphError` (one
error answer in Meta's shape, ``{"error": {"message", "type", "code",
"error_subcode", "fbtrace_id", ...}}``). The HTTP side lives in
:mod:`sidecar.sandbox`.

How a fault fires: for each ``POST .../events`` the queue picks the first fault
that applies (a fault with ``reject_event_ids`` applies only to a batch holding
one of those ids; any other fault applies to every request), counts one use of
it, and drops it when its ``times`` are used up (``times`` 0 or ``None``: it
stays until cleared). The fault then adds ``delay_seconds``, drops the
connection, or answers with its error; a fault that only delays lets the
request be answered normally afterwards.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from typing import Any

SUBCODE_INVALID_EVENT = 2804001
_GRAPH_ERROR_KEYS = frozenset(
    {
        "code",
        "error_subcode",
        "is_transient",
        "message",
        "type",
        "error_user_title",
        "error_user_msg",
    }
)
# A status-only fault answers with the error Graph gives for that kind of failure.
_STATUS_ERRORS: dict[int, tuple[int, str]] = {
    429: (4, "Application request limit reached"),
    500: (1, "An unknown error occurred"),
    502: (1, "An unknown error occurred"),
    503: (2, "Service temporarily unavailable"),
    504: (2, "Service temporarily unavailable"),
}


def new_fbtrace_id() -> str:
    """A random id shaped like Meta's ``fbtrace_id`` (23 URL-safe characters)."""
    return secrets.token_urlsafe(17)


class GraphError(Exception):
    """One error answer: the HTTP status and the fields of Meta's ``error`` object."""

    def __init__(
        self,
        message: str,
        *,
        code: int = 100,
        status: int = 400,
        subcode: int | None = None,
        type_: str = "OAuthException",
        is_transient: bool | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        retry_after: str | None = None,
        raw_body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.subcode = subcode
        self.type = type_
        self.is_transient = is_transient
        self.user_title = user_title
        self.user_msg = user_msg
        self.retry_after = retry_after
        self.raw_body = raw_body

    def envelope(self, fbtrace_id: str) -> dict[str, Any]:
        """The JSON body Meta sends: ``{"error": {...}}``."""
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        if self.user_title is not None:
            error["error_user_title"] = self.user_title
        if self.user_msg is not None:
            error["error_user_msg"] = self.user_msg
        error["fbtrace_id"] = fbtrace_id
        return {"error": error}


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; see the module docstring for how it fires.

    ``status``: HTTP status to answer (default: 401 for code 190, 400 for another
    ``graph_error``, 429 when only ``retry_after`` is set, 500 otherwise).
    ``graph_error``: fields of the error object (``code``, ``error_subcode``,
    ``is_transient``, ``message``, ``type``, ``error_user_title``,
    ``error_user_msg``); default: the error Graph gives for ``status``.
    ``retry_after``: ``Retry-After`` header value (seconds or an HTTP-date).
    ``delay_seconds``: latency added before anything else happens.
    ``drop_connection``: close the socket without answering.
    ``times``: how many requests it applies to; 0 or ``None``: until cleared.
    ``reject_event_ids``: apply only to a batch holding one of these event ids,
    failing it with code 100 / subcode 2804001 naming the event, the way Meta
    fails a whole batch for one bad event.
    ``body``: a raw response body instead of the Graph envelope (say, a proxy's
    HTML error page).
    """

    status: int | None = None
    graph_error: Mapping[str, Any] | None = None
    retry_after: str | None = None
    delay_seconds: float = 0.0
    drop_connection: bool = False
    times: int | None = 1
    reject_event_ids: AbstractSet[str] = frozenset()
    body: str | None = None

    def __post_init__(self) -> None:
        problem = _fault_problem(self)
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "reject_event_ids", frozenset(self.reject_event_ids))

    @property
    def answers(self) -> bool:
        """Whether firing this fault answers the request (rather than only delaying it)."""
        return bool(
            self.status
            or self.graph_error
            or self.retry_after
            or self.body
            or self.reject_event_ids
        )

    @classmethod
    def from_json(cls, obj: object) -> Fault:
        """A fault from the control API's JSON; ``ValueError`` names what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("a fault must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        values = dict(obj)
        if isinstance(values.get("retry_after"), int | float):
            values["retry_after"] = str(values["retry_after"])
        ids = values.get("reject_event_ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("reject_event_ids must be a list of strings")
            values["reject_event_ids"] = frozenset(ids)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["reject_event_ids"] = sorted(self.reject_event_ids)
        out["graph_error"] = dict(self.graph_error) if self.graph_error else None
        return out


def _fault_problem(fault: Fault) -> str | None:
    """What is wrong with a fault's fields, or ``None``."""
    checks: tuple[tuple[bool, str], ...] = (
        (
            fault.status is not None
            and not (type(fault.status) is int and 100 <= fault.status <= 599),
            "status must be an HTTP status code (100-599)",
        ),
        (
            not isinstance(fault.delay_seconds, int | float)
            or isinstance(fault.delay_seconds, bool)
            or not math.isfinite(fault.delay_seconds)
            or fault.delay_seconds < 0,
            "delay_seconds must be a number >= 0",
        ),
        (
            fault.times is not None and (type(fault.times) is not int or fault.times < 0),
            "times must be an integer >= 0 (0 or null: until cleared)",
        ),
        (type(fault.drop_connection) is not bool, "drop_connection must be true or false"),
        (
            fault.retry_after is not None and not isinstance(fault.retry_after, str),
            "retry_after must be a string (seconds or an HTTP-date)",
        ),
        (fault.body is not None and not isinstance(fault.body, str), "body must be a string"),
    )
    for failed, message in checks:
        if failed:
            return message
    return _graph_error_problem(fault.graph_error)


def _graph_error_problem(graph_error: Mapping[str, Any] | None) -> str | None:
    if graph_error is None:
        return None
    if not isinstance(graph_error, Mapping):
        return "graph_error must be an object"
    unknown = sorted(set(graph_error) - _GRAPH_ERROR_KEYS)
    if unknown:
        return f"unknown graph_error field(s): {', '.join(unknown)}"
    code = graph_error.get("code")
    if code is not None and type(code) is not int:
        return "graph_error.code must be an integer"
    return None


@dataclass(frozen=True)
class Firing:
    """A fault picked for one request; ``rejected`` is the (index, event_id) it matched."""

    fault: Fault
    rejected: tuple[int, str] | None = None

    def answer(self) -> GraphError | None:
        """The error to answer with, or ``None`` when the fault only delays."""
        if not self.fault.answers:
            return None
        fault = self.fault
        if self.rejected is not None and fault.status is None and fault.graph_error is None:
            error = _rejected_event_error(*self.rejected)
        else:
            error = _configured_error(fault)
        error.retry_after = fault.retry_after
        error.raw_body = fault.body
        return error


def _rejected_event_error(index: int, event_id: str) -> GraphError:
    detail = f"event {event_id!r} (data[{index}]) was rejected (injected fault)"
    return GraphError(
        f"Invalid parameter: {detail}",
        subcode=SUBCODE_INVALID_EVENT,
        is_transient=False,
        user_title="Invalid parameter",
        user_msg=detail,
    )


def _configured_error(fault: Fault) -> GraphError:
    spec = dict(fault.graph_error or {})
    status = fault.status or _default_status(fault)
    default_code, default_message = _STATUS_ERRORS.get(status, (1, "An unknown error occurred"))
    code = int(spec.get("code", default_code))
    retryable = status == 429 or status >= 500
    transient = spec.get("is_transient", True if "code" not in spec and retryable else None)
    subcode = spec.get("error_subcode")
    return GraphError(
        str(spec.get("message", default_message)),
        code=code,
        status=status,
        subcode=int(subcode) if subcode is not None else None,
        type_=str(spec.get("type", "OAuthException")),
        is_transient=None if transient is None else bool(transient),
        user_title=spec.get("error_user_title"),
        user_msg=spec.get("error_user_msg"),
    )


def _default_status(fault: Fault) -> int:
    if fault.graph_error:
        return 401 if fault.graph_error.get("code") == 190 else 400
    return 429 if fault.retry_after else 500


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None  # None: until cleared


@dataclass
class FaultQueue:
    """Faults waiting to fire, in order of injection."""

    _armed: list[_Armed] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._armed)

    def inject(self, fault: Fault) -> None:
        self._armed.append(_Armed(fault, fault.times or None))

    def inject_all(self, faults: Iterable[Fault]) -> None:
        for fault in faults:
            self.inject(fault)

    def clear(self) -> None:
        self._armed.clear()

    def pending(self) -> list[dict[str, Any]]:
        """The waiting faults with how many uses each has left (``null``: until cleared)."""
        return [{**armed.fault.to_json(), "remaining": armed.remaining} for armed in self._armed]

    def take(self, events: Sequence[object]) -> Firing | None:
        """Pick the fault for a request carrying ``events`` and count one use of it."""
        for position, armed in enumerate(self._armed):
            rejected = None
            if armed.fault.reject_event_ids:
                rejected = _first_listed(events, armed.fault.reject_event_ids)
                if rejected is None:
                    continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    del self._armed[position]
            return Firing(armed.fault, rejected)
        return None


def _first_listed(events: Sequence[object], ids: AbstractSet[str]) -> tuple[int, str] | None:
    for index, event in enumerate(events):
        if isinstance(event, dict):
            event_id = event.get("event_id")
            if isinstance(event_id, str) and event_id in ids:
                return index, event_id
    return None
