"""Source paths of the mapping stage: where each field is read in a message.

Owns the table of canonical source paths (SPEC §3.2-3.4) with their default
locations and accepted spellings, resolving it against a destination's
``property_mappings`` and phone field into compiled getters, and the hot-path
helpers that read a message through them (:func:`first`, :func:`first_text`)
and coerce what they find (:func:`text`). :mod:`sidecar.mapping`,
:mod:`sidecar.user_data` and :mod:`sidecar.custom_data` all read messages
through here; this module imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Path = tuple[str, ...]
Getter = Callable[[Mapping[str, Any]], Any]  # reads one path; None when absent
Sources = tuple[Getter, ...]  # alternatives, first present wins

ZIP_KEYS = ("zipcode", "postalCode", "postal_code")
PRODUCT_FIELDS = ("sku", "product_id", "variant_id", "price", "quantity", "name", "category")
PRODUCT_PREFIX = "properties.products[]."


def _p(dotted: str) -> tuple[Path, ...]:
    return (tuple(dotted.split(".")),)


def _zip(prefix: str) -> tuple[Path, ...]:
    return tuple((*prefix.split("."), key) for key in ZIP_KEYS)


# Every canonical source path of SPEC §3.2-3.4 and where it is read by
# default. ``properties.phone``/``context.traits.phone`` stand for the
# configured phone field.
DEFAULT_PATHS: dict[str, tuple[Path, ...]] = {
    "timestamp": _p("timestamp"),
    "originalTimestamp": _p("originalTimestamp"),
    "context.page.url": _p("context.page.url"),
    "properties.url": _p("properties.url"),
    "properties.email": _p("properties.email"),
    "context.traits.email": _p("context.traits.email"),
    "properties.phone": _p("properties.phone"),
    "context.traits.phone": _p("context.traits.phone"),
    "properties.first_name": _p("properties.first_name"),
    "properties.last_name": _p("properties.last_name"),
    "context.traits.name": _p("context.traits.name"),
    "context.traits.firstName": _p("context.traits.firstName"),
    "context.traits.first_name": _p("context.traits.first_name"),
    "context.traits.lastName": _p("context.traits.lastName"),
    "context.traits.last_name": _p("context.traits.last_name"),
    "properties.shipping.zipcode": _zip("properties.shipping"),
    "properties.shipping.city": _p("properties.shipping.city"),
    "properties.shipping.state": _p("properties.shipping.state"),
    "context.traits.address.zipcode": _zip("context.traits.address"),
    "context.traits.address.city": _p("context.traits.address.city"),
    "context.traits.address.state": _p("context.traits.address.state"),
    "context.traits.address.country": _p("context.traits.address.country"),
    "userId": _p("userId"),
    "anonymousId": _p("anonymousId"),
    "context.ip": _p("context.ip"),
    "context.userAgent": _p("context.userAgent"),
    "properties.fbc": _p("properties.fbc"),
    "context.clientIds.fbc": _p("context.clientIds.fbc"),
    "properties.fbp": _p("properties.fbp"),
    "context.clientIds.fbp": _p("context.clientIds.fbp"),
    "properties.total": _p("properties.total"),
    "properties.currency": _p("properties.currency"),
    "properties.meta.i18n.currency": _p("properties.meta.i18n.currency"),
    "properties.products": _p("properties.products"),
    **{f"properties.{field}": _p(f"properties.{field}") for field in PRODUCT_FIELDS},
    **{PRODUCT_PREFIX + field: ((field,),) for field in PRODUCT_FIELDS},
}
# Spellings accepted for the same canonical path.
ALIASES = {
    f"{prefix}.{key}": f"{prefix}.zipcode"
    for prefix in ("properties.shipping", "context.traits.address")
    for key in ZIP_KEYS[1:]
}
CANONICAL_PATHS = frozenset(DEFAULT_PATHS) | frozenset(ALIASES)


def resolve(mappings: Mapping[str, str], phone_field: str | None) -> dict[str, Sources]:
    """Getters for every canonical path, after the phone field and the
    property mappings have replaced the default locations."""
    paths = dict(DEFAULT_PATHS)
    if phone_field:
        field = tuple(phone_field.split("."))
        paths["properties.phone"] = (("properties", *field),)
        paths["context.traits.phone"] = (("context", "traits", *field),)
    for source, target in mappings.items():
        paths[ALIASES.get(source, source)] = (tuple(target.split(".")),)
    return {name: tuple(_getter(path) for path in alts) for name, alts in paths.items()}


# --- message access and value coercion (hot path) ---------------------------


def _getter(path: Path) -> Getter:
    """A function reading ``path`` from a message (nested objects are dicts,
    as JSON decoding makes them); specialised by depth, with the reads
    inlined, because path reads are most of the work of mapping an event."""
    if len(path) == 1:
        return _get1(*path)
    if len(path) == 2:
        return _get2(*path)
    if len(path) == 3:
        return _get3(*path)
    return _dig(path)


def _get1(a: str) -> Getter:
    def get(message: Mapping[str, Any]) -> Any:
        return message.get(a)

    return get


def _get2(a: str, b: str) -> Getter:
    def get(message: Mapping[str, Any]) -> Any:
        value = message.get(a)
        return value.get(b) if isinstance(value, dict) else None

    return get


def _get3(a: str, b: str, c: str) -> Getter:
    def get(message: Mapping[str, Any]) -> Any:
        value = message.get(a)
        if not isinstance(value, dict):
            return None
        value = value.get(b)
        return value.get(c) if isinstance(value, dict) else None

    return get


def _dig(path: Path) -> Getter:
    def get(message: Mapping[str, Any]) -> Any:
        value: Any = message
        for key in path:
            # ``type(...) is dict`` first: the ABC check is slow, and JSON
            # decoding only ever makes dicts.
            if type(value) is not dict and not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    return get


def first(message: Mapping[str, Any], alts: Sources) -> Any:
    """The value at the first of ``alts`` that is present; ``None`` if none is."""
    for get in alts:
        value = get(message)
        if value is not None:
            return value
    return None


def text(value: Any) -> str | None:
    """A usable scalar as trimmed text; ``None`` for blanks, bools, containers."""
    if isinstance(value, str):
        return value.strip() or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def first_text(message: Mapping[str, Any], alts: Sources) -> str | None:
    """The first of ``alts`` that holds usable text, as :func:`text` makes it."""
    for get in alts:
        value = get(message)
        if value is None:  # absent: the usual miss
            continue
        found = (value.strip() or None) if type(value) is str else text(value)
        if found is not None:
            return found
    return None
