"""Validation of one ``POST .../events`` call, the way Meta's Graph API judges it.

Owns the sandbox's rules and their tables: the API version in the path, the access
token, ``appsecret_proof``, the pixel id, the batch (``data`` present, non-empty, at
most :data:`MAX_EVENTS_PER_REQUEST` events; ``test_event_code``/``partner_agent``) and
every event (known fields of the right type, ``event_name`` length, ``event_time`` age,
``action_source``, ``user_data`` hashes and ids, ``custom_data`` currency and value,
``app_data`` for app events). Each check is a pure function that returns nothing or
raises :class:`~sidecar.sandbox_faults.GraphError` for the first problem; the order
in which they run, and the reading of the request, belong to :mod:`sidecar.sandbox`.

Subcodes the checks answer with (only 2804003 and 2804050 are observed from Meta;
the others are the sandbox's choice, since Meta publishes no table): 2804001 any
other invalid event or batch, 2804003 event older than 7 days, 2804019 event time in
the future, 2804050 no usable customer information, 33 (with code 100) unknown pixel.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any

from sidecar.sandbox_faults import SUBCODE_INVALID_EVENT, GraphError

__all__ = [
    "ACTION_SOURCES",
    "HASHED_FIELDS",
    "MAX_EVENTS_PER_REQUEST",
    "MAX_EVENT_AGE_SECONDS",
    "MAX_EVENT_NAME_LENGTH",
    "MAX_FUTURE_SKEW_SECONDS",
    "SUBCODE_IN_FUTURE",
    "SUBCODE_NO_CUSTOMER_INFO",
    "SUBCODE_TOO_OLD",
    "SUBCODE_UNSUPPORTED_POST",
    "check_batch",
    "check_pixel",
    "check_proof",
    "check_token",
    "check_version",
    "is_graph_version",
]

MAX_EVENTS_PER_REQUEST = 1000
MAX_EVENT_AGE_SECONDS = 7 * 24 * 3600
MAX_FUTURE_SKEW_SECONDS = 300
MAX_EVENT_NAME_LENGTH = 50
SUBCODE_TOO_OLD = 2804003
SUBCODE_IN_FUTURE = 2804019
SUBCODE_NO_CUSTOMER_INFO = 2804050
SUBCODE_UNSUPPORTED_POST = 33

# fmt: off
ACTION_SOURCES = frozenset({
    "email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
    "business_messaging", "other",
})
HASHED_FIELDS = frozenset({
    "em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id",
    "f5first", "f5last", "fi", "dobd", "dobm", "doby",
})
_TEXT_FIELDS = frozenset({
    "client_user_agent", "fbc", "fbp", "subscription_id", "anon_id", "madid", "page_id",
    "page_scoped_user_id", "ctwa_clid", "ig_account_id", "ig_sid",
    "whatsapp_business_account_id", "instagram_business_account_id",
})
# Meta refuses events whose customer information is only (part of) one of these sets.
_TOO_BROAD = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)
_REQUIRED = ("event_name", "event_time", "action_source", "user_data")
_EVENT_FIELDS: dict[str, tuple[type, ...]] = {
    "event_name": (str,), "event_time": (int,), "action_source": (str,), "user_data": (dict,),
    "custom_data": (dict,), "event_id": (str,), "event_source_url": (str,),
    "referrer_url": (str,), "opt_out": (bool,), "data_processing_options": (list,),
    "data_processing_options_country": (int,), "data_processing_options_state": (int,),
    "app_data": (dict,), "original_event_data": (dict,), "customer_segmentation": (str,),
    "messaging_channel": (str,), "attribution_data": (dict,),
    "messaging_outcome_data": (dict,), "advanced_measurement_table": (str,),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object",
               list: "an array"}
# fmt: on
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]+")
_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,2}")


def _invalid(
    detail: str, subcode: int = SUBCODE_INVALID_EVENT, title: str = "Invalid parameter"
) -> GraphError:
    return GraphError(
        f"Invalid parameter: {detail}",
        subcode=subcode,
        is_transient=False,
        user_title=title,
        user_msg=detail,
    )


def is_graph_version(version: str) -> bool:
    """Whether ``version`` looks like a Graph API version (``v19.0``)."""
    return _VERSION.fullmatch(version) is not None


def check_version(version: str, pixel_id: str) -> None:
    if not is_graph_version(version):
        raise GraphError(f"Unknown path components: /{version}/{pixel_id}/events", code=2500)


def check_token(token: str | None, expected: str | None) -> None:
    if not token:
        raise GraphError(
            "An access token is required to request this resource.", code=190, status=401
        )
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        raise GraphError(
            "Invalid OAuth access token - Cannot parse access token", code=190, status=401
        )


def check_proof(params: dict[str, Any], token: str | None, app_secret: str | None) -> None:
    if app_secret is None or token is None:
        return
    proof = params.get("appsecret_proof")
    if not isinstance(proof, str) or not proof:
        raise GraphError(
            "API calls from the server require an appsecret_proof argument",
            type_="GraphMethodException",
        )
    expected = hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(proof.encode(), expected.encode()):
        raise GraphError(
            "Invalid appsecret_proof provided in the API argument", type_="GraphMethodException"
        )


def check_pixel(pixel_id: str, expected: str | None) -> None:
    if expected is not None and pixel_id != expected:
        raise GraphError(
            f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation. Please "
            "read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
            subcode=SUBCODE_UNSUPPORTED_POST,
            type_="GraphMethodException",
        )


def check_batch(
    params: dict[str, Any], events: list[Any], clock: Callable[[], float]
) -> list[dict[str, Any]]:
    """``events`` (the decoded ``params["data"]``) if the batch and every event pass."""
    _check_top_level(params)
    now = int(clock())
    for index, event in enumerate(events):
        _check_event(event, index, now)
    return events


def _check_top_level(params: dict[str, Any]) -> None:
    data = params.get("data")
    if data is None:
        raise GraphError("(#100) The parameter data is required")
    if not data:
        raise GraphError("(#100) param data must be a non-empty array.")
    if len(data) > MAX_EVENTS_PER_REQUEST:
        raise _invalid(
            f"data holds {len(data)} events; at most "
            f"{MAX_EVENTS_PER_REQUEST} are allowed per request"
        )
    for name in ("test_event_code", "partner_agent"):
        value = params.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise GraphError(f"(#100) param {name} must be a non-empty string.")


def _check_event(event: object, index: int, now: int) -> None:
    if type(event) is not dict:
        raise _invalid(f"data[{index}] must be a JSON object")
    for name in _REQUIRED:
        if name not in event:
            raise _invalid(f"data[{index}].{name} is required")
    for key, value in event.items():
        _check_field_type(key, value, index)
    if len(event["event_name"]) > MAX_EVENT_NAME_LENGTH:
        raise _invalid(
            f"data[{index}].event_name is longer than {MAX_EVENT_NAME_LENGTH} characters"
        )
    _check_event_time(event["event_time"], index, now)
    if event["action_source"] not in ACTION_SOURCES:
        raise _invalid(
            f"data[{index}].action_source must be one of {', '.join(sorted(ACTION_SOURCES))}"
        )
    _check_user_data(event["user_data"], index)
    _check_custom_data(event, index)
    if event["action_source"] == "app":
        _check_app_data(event, index)


def _check_field_type(key: str, value: object, index: int) -> None:
    expected = _EVENT_FIELDS.get(key)
    if expected is None:
        raise _invalid(f"data[{index}] has an unknown parameter {key!r}")
    if type(value) not in expected:
        kind = "not be null" if value is None else f"be {_TYPE_NAMES[expected[0]]}"
        raise _invalid(f"data[{index}].{key} must {kind}")
    if value == "":
        raise _invalid(f"data[{index}].{key} must not be empty")


def _check_event_time(event_time: int, index: int, now: int) -> None:
    age = now - event_time
    if age > MAX_EVENT_AGE_SECONDS:
        raise _invalid(
            f"data[{index}].event_time is more than 7 days in the past; events need to be "
            "sent from your server within 7 days of when they occurred",
            SUBCODE_TOO_OLD,
            "Event Timestamp Too Old",
        )
    if -age > MAX_FUTURE_SKEW_SECONDS:
        raise _invalid(
            f"data[{index}].event_time is in the future",
            SUBCODE_IN_FUTURE,
            "Event Timestamp In The Future",
        )


def _check_user_data(user_data: dict[str, Any], index: int) -> None:
    for key, value in user_data.items():
        check = _USER_DATA_CHECKS.get(key)
        if check is None:
            raise _invalid(f"data[{index}].user_data has an unknown parameter {key!r}")
        check(key, value, index)
    keys = user_data.keys()
    if not keys or any(keys <= broad for broad in _TOO_BROAD):
        raise _invalid(
            f"data[{index}].user_data has no customer information parameters, or a "
            "combination so broad that it is unlikely to be effective for matching",
            SUBCODE_NO_CUSTOMER_INFO,
            "Insufficient Customer Information",
        )


def _check_hashed(key: str, value: object, index: int) -> None:
    values = [value] if type(value) is str else value
    if type(values) is list and values:
        for item in values:
            if type(item) is not str or _HEX64.fullmatch(item) is None:
                break
        else:
            return
    raise _invalid(
        f"data[{index}].user_data.{key} must be a SHA-256 hash (64 lowercase hex characters) "
        "or a non-empty array of them; unhashed customer information is refused",
        title="Invalid Customer Information Parameter",
    )


def _check_text(key: str, value: object, index: int) -> None:
    if type(value) is not str or not value:
        raise _invalid(f"data[{index}].user_data.{key} must be a non-empty string")


def _check_ip(key: str, value: object, index: int) -> None:
    if type(value) is not str or not _is_ip(value):
        raise _invalid(f"data[{index}].user_data.{key} must be an IPv4 or IPv6 address")


def _check_numeric_id(key: str, value: object, index: int) -> None:
    if type(value) is int or (type(value) is str and _DIGITS.fullmatch(value)):
        return
    raise _invalid(f"data[{index}].user_data.{key} must be a numeric id")


@functools.lru_cache(maxsize=4096)
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_USER_DATA_CHECKS: dict[str, Callable[[str, object, int], None]] = {
    **dict.fromkeys(HASHED_FIELDS, _check_hashed),
    **dict.fromkeys(_TEXT_FIELDS, _check_text),
    "client_ip_address": _check_ip,
    "fb_login_id": _check_numeric_id,
    "lead_id": _check_numeric_id,
}


def _check_custom_data(event: dict[str, Any], index: int) -> None:
    custom: dict[str, Any] = event.get("custom_data") or {}
    if "currency" in custom and not _is_currency(custom["currency"]):
        raise _invalid(f"data[{index}].custom_data.currency must be a 3-letter ISO 4217 code")
    if "value" in custom and not _is_amount(custom["value"]):
        raise _invalid(f"data[{index}].custom_data.value must be a number")
    if event["event_name"] == "Purchase" and not ("currency" in custom and "value" in custom):
        raise _invalid(
            f"data[{index}] is a Purchase event without custom_data.currency and custom_data.value"
        )


def _is_currency(value: object) -> bool:
    return type(value) is str and len(value) == 3 and value.isascii() and value.isalpha()


def _is_amount(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    try:
        return math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _check_app_data(event: dict[str, Any], index: int) -> None:
    app_data = event.get("app_data")
    if app_data is None or not {"advertiser_tracking_enabled", "extinfo"} <= app_data.keys():
        raise _invalid(
            f"data[{index}] is an app event without app_data."
            "advertiser_tracking_enabled and app_data.extinfo"
        )
