"""app_data: the device block Meta requires on ``action_source: app`` events.

Meta refuses an app event without ``app_data.advertiser_tracking_enabled``
and ``app_data.extinfo`` (a positional array of 16 strings). Segment's
mobile SDKs put the same facts in ``context.app``, ``context.device``,
``context.os``, ``context.screen``, ``context.network``, ``context.locale``
and ``context.timezone``; this module copies them over, with ``""`` where the
event has nothing. Pure: no clock, no I/O.

Choices where Meta and Segment are silent (also in docs/mapping.md):
- ``extinfo[0]`` is ``a2`` for Android and ``i2`` for anything else (iOS is
  the platform whose events most often arrive through a server);
- ``advertiser_tracking_enabled`` is ``context.device.adTrackingEnabled``
  and ``0`` when absent: without the user's consent signal, assume none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

# extinfo positions, after Meta's App Events API: index → (context object, key).
_EXTINFO: tuple[tuple[str, str], ...] = (
    ("app", "namespace"),  # 1 package name
    ("app", "version"),  # 2 short version
    ("app", "build"),  # 3 long version
    ("os", "version"),  # 4 OS version
    ("device", "model"),  # 5 device model
    ("", "locale"),  # 6 locale
    ("", "timezone_abbreviation"),  # 7 time zone abbreviation (Segment has none)
    ("network", "carrier"),  # 8 carrier
    ("screen", "width"),  # 9
    ("screen", "height"),  # 10
    ("screen", "density"),  # 11
    ("device", "cpu_cores"),  # 12 (Segment has none)
    ("device", "external_storage_gb"),  # 13 (Segment has none)
    ("device", "free_storage_gb"),  # 14 (Segment has none)
    ("", "timezone"),  # 15 device time zone
)


_OBJECTS = ("app", "os", "device", "network", "screen")


def _text(value: Any) -> str:
    if type(value) is str:  # the usual case
        return value.strip()
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float | str):
        return str(value).strip()
    return ""


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # ``type(...) is dict`` first: the ABC check is slow, and JSON decoding
    # only ever makes dicts.
    return type(value) is dict or isinstance(value, Mapping)


def build(context: Any) -> dict[str, Any]:
    """The ``app_data`` object of one event from its Segment ``context``."""
    ctx: Mapping[str, Any] = context if _is_mapping(context) else {}
    parts: dict[str, Mapping[str, Any]] = {"": ctx}  # "": context itself
    for name in _OBJECTS:
        value = ctx.get(name)
        parts[name] = value if _is_mapping(value) else {}
    os_name = _text(parts["os"].get("name")).lower()
    extinfo = ["a2" if os_name == "android" else "i2"]
    extinfo += [_text(parts[obj].get(key)) for obj, key in _EXTINFO]
    tracking = parts["device"].get("adTrackingEnabled")
    return {
        "advertiser_tracking_enabled": 1 if tracking is True else 0,
        "extinfo": extinfo,
    }
