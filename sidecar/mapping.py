"""Mapping: one Segment-style message → one Meta server event (SPEC §3).

Owns the translation contract: the event-name table and the events filter,
the common fields, ``user_data`` (hashed through :mod:`sidecar.normalize`,
enriched through :mod:`sidecar.geo`), ``custom_data`` for track calls, and the
property mappings that point the canonical source paths at an operator's own
data model. ``docs/mapping.md`` is the human-readable form of this module.

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
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from sidecar import normalize

if TYPE_CHECKING:
    from sidecar.config import DestinationSettings
    from sidecar.geo import GeoLookup

Path = tuple[str, ...]
Getter = Callable[[Mapping[str, Any]], Any]  # reads one path; None when absent
_Alt = tuple[Getter, int | None]  # a source, and which word of it (None: all)
_Sources = tuple[Getter, ...]  # alternatives, first present wins

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
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_WHOLE = re.compile(r"\d+")
_TARGET = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+)*")
# Dotted-quad IPv4 without leading zeros: checked by regex because
# ``ipaddress`` costs several microseconds per call on the hot path.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")

_ZIP_KEYS = ("zipcode", "postalCode", "postal_code")
_PRODUCT_FIELDS = ("sku", "product_id", "variant_id", "price", "quantity", "name", "category")
_PRODUCT_PREFIX = "properties.products[]."


def _p(dotted: str) -> tuple[Path, ...]:
    return (tuple(dotted.split(".")),)


def _zip(prefix: str) -> tuple[Path, ...]:
    return tuple((*prefix.split("."), key) for key in _ZIP_KEYS)


# Every canonical source path of SPEC §3.2-3.4 and where it is read by
# default. ``properties.phone``/``context.traits.phone`` stand for the
# configured phone field.
_DEFAULT_PATHS: dict[str, tuple[Path, ...]] = {
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
    **{f"properties.{field}": _p(f"properties.{field}") for field in _PRODUCT_FIELDS},
    **{_PRODUCT_PREFIX + field: ((field,),) for field in _PRODUCT_FIELDS},
}
# Spellings accepted for the same canonical path.
_ALIASES = {
    f"{prefix}.{key}": f"{prefix}.zipcode"
    for prefix in ("properties.shipping", "context.traits.address")
    for key in _ZIP_KEYS[1:]
}
CANONICAL_PATHS = frozenset(_DEFAULT_PATHS) | frozenset(_ALIASES)

# Canonical paths that feed user_data: whatever they point at inside
# ``properties`` is personal data and is kept out of custom_data.
_IDENTITY_PATHS = frozenset(
    key
    for key in _DEFAULT_PATHS
    if (key.startswith("context.") and key != "context.page.url")
    or key in {"userId", "anonymousId"}
    or key.startswith(
        tuple(
            f"properties.{name}"
            for name in ("email", "phone", "first_name", "last_name", "shipping.", "fbc", "fbp")
        )
    )
)
# Properties never copied to custom_data even when no mapping or phone field
# names them: raw personal data must not reach Meta unhashed.
_ALWAYS_STRIPPED = ("email", "phone", "first_name", "last_name", "shipping", "fbc", "fbp")


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


@dataclass(frozen=True, slots=True)
class _ProductPaths:
    ids: tuple[_Sources, ...]  # content-id candidates, preferred first
    price: _Sources
    quantity: _Sources
    name: _Sources
    category: _Sources


_HashSpec = tuple[str, tuple[_Alt, ...], normalize.Normaliser]


class Mapper:
    """Maps messages for one destination; build once, call :meth:`map` often."""

    def __init__(self, dest: DestinationSettings, geo: GeoLookup | None = None) -> None:
        paths = _resolve_paths(dest.property_mappings, dest.phone_field)
        self._geo = geo
        self._action_source: str = dest.action_source
        self._default_currency = dest.default_currency
        self._filter = frozenset(name.strip().casefold() for name in dest.events_filter)
        self._time = paths["timestamp"] + paths["originalTimestamp"]
        self._page_url = paths["context.page.url"]
        self._page_url_fallback = paths["properties.url"]
        self._hashed = _hash_specs(paths, dest.phone_field, dest.phone_default_region)
        self._external_ids = paths["userId"] + paths["anonymousId"]
        self._ip = paths["context.ip"]
        self._user_agent = paths["context.userAgent"]
        self._fbc = paths["properties.fbc"] + paths["context.clientIds.fbc"]
        self._fbp = paths["properties.fbp"] + paths["context.clientIds.fbp"]
        self._total = paths["properties.total"]
        self._currency = paths["properties.currency"] + paths["properties.meta.i18n.currency"]
        self._products = paths["properties.products"]
        self._item_paths = _product_paths(paths, _PRODUCT_PREFIX, dest.content_id_field)
        self._top_paths = _product_paths(paths, "properties.", dest.content_id_field)
        # A single product made of the top-level properties needs its id there.
        self._top_trigger = paths[f"properties.{dest.content_id_field}"] + paths["properties.sku"]
        self._plain = (
            ("client_user_agent", self._user_agent),
            ("fbc", self._fbc),
            ("fbp", self._fbp),
        )
        self._stripped_keys, self._stripped_paths = _stripped(
            dest.property_mappings, dest.phone_field
        )

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
        payload["user_data"] = self._user_data(message)
        if kind == "track":
            payload["custom_data"] = self._custom_data(message)
        return Mapped(event_name=event_name, payload=payload)

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
        url = _first_text(message, self._page_url)
        if url is None and kind == "page":
            url = _first_text(message, self._page_url_fallback)
        return url

    # --- user_data ----------------------------------------------------------

    def _user_data(self, message: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, alts, normaliser in self._hashed:
            value = _first_hashed(message, alts, normaliser)
            if value is not None:
                data[key] = value
        ip = _ip(_first_text(message, self._ip))
        if self._geo is not None and ip is not None:
            _add_geo(data, self._geo, ip)
        external = self._external_id(message)
        if external:
            data["external_id"] = external
        if ip is not None:
            data["client_ip_address"] = ip
        for key, sources in self._plain:
            text = _first_text(message, sources)
            if text is not None:
                data[key] = text
        return data

    def _external_id(self, message: Mapping[str, Any]) -> list[str]:
        ids: list[str] = []
        for get in self._external_ids:
            text = _text(get(message))
            value = normalize.hashed(text, normalize.external_id) if text else None
            if value is not None and value not in ids:
                ids.append(value)
        return ids

    # --- custom_data --------------------------------------------------------

    def _custom_data(self, message: Mapping[str, Any]) -> dict[str, Any]:
        props = message.get("properties")
        data = self._without_identity(props if isinstance(props, dict) else {})
        data["value"] = _value(_first(message, self._total)) or "0"
        data["currency"] = self._currency_of(message)
        items = _first(message, self._products)
        if isinstance(items, list) and items:
            products = [item for item in items if isinstance(item, dict)]
            if products:
                data.update(_contents(products, self._item_paths))
        elif _first_text(message, self._top_trigger) is not None:
            data.update(_contents([message], self._top_paths))
        return data

    def _without_identity(self, props: dict[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in props.items() if k not in self._stripped_keys}
        for path in self._stripped_paths:
            data = _without(data, path)
        return data

    def _currency_of(self, message: Mapping[str, Any]) -> str:
        for get in self._currency:
            text = _text(get(message))
            code = normalize.currency(text) if text else None
            if code is not None:
                return code
        return self._default_currency


def _add_geo(data: dict[str, Any], geo: GeoLookup, ip: str) -> None:
    """Fill ct, st and country from the address where the event has none."""
    if "ct" in data and "st" in data and "country" in data:
        return
    found = geo.lookup(ip)
    if found is None:
        return
    for key, raw, normaliser in (
        ("ct", found.city, normalize.city),
        ("st", found.region, normalize.state),
        ("country", found.country, normalize.country),
    ):
        if key not in data and raw:
            value = normalize.hashed(raw, normaliser)
            if value is not None:
                data[key] = value


# --- configuration helpers (run once per Mapper) ---------------------------


def _resolve_paths(mappings: Mapping[str, str], phone_field: str | None) -> dict[str, _Sources]:
    paths = dict(_DEFAULT_PATHS)
    if phone_field:
        field = tuple(phone_field.split("."))
        paths["properties.phone"] = (("properties", *field),)
        paths["context.traits.phone"] = (("context", "traits", *field),)
    for source, target in mappings.items():
        paths[_ALIASES.get(source, source)] = (tuple(target.split(".")),)
    return {name: tuple(_getter(path) for path in alts) for name, alts in paths.items()}


def _hash_specs(
    paths: dict[str, _Sources], phone_field: str | None, region: str | None
) -> tuple[_HashSpec, ...]:
    def alts(*names: str, word: int | None = None) -> tuple[_Alt, ...]:
        return tuple((get, word) for name in names for get in paths[name])

    traits, shipping, address = "context.traits.", "properties.shipping.", "context.traits.address."
    specs: list[_HashSpec] = [
        ("em", alts("properties.email", traits + "email"), normalize.email),
    ]
    if phone_field:
        phone = normalize.phone_for(region)
        specs.append(("ph", alts("properties.phone", traits + "phone"), phone))
    first = ("properties.first_name", traits + "name", traits + "firstName", traits + "first_name")
    last = ("properties.last_name", traits + "name", traits + "lastName", traits + "last_name")
    specs += [
        ("fn", alts(first[0]) + alts(first[1], word=0) + alts(*first[2:]), normalize.name),
        ("ln", alts(last[0]) + alts(last[1], word=1) + alts(*last[2:]), normalize.name),
        ("ct", alts(shipping + "city", address + "city"), normalize.city),
        ("st", alts(shipping + "state", address + "state"), normalize.state),
        ("zp", alts(shipping + "zipcode", address + "zipcode"), normalize.zip_code),
        ("country", alts(address + "country"), normalize.country),
    ]
    return tuple(specs)


def _product_paths(paths: dict[str, _Sources], prefix: str, content_id_field: str) -> _ProductPaths:
    order = dict.fromkeys((content_id_field, "sku", "product_id", "variant_id"))
    return _ProductPaths(
        ids=tuple(paths[prefix + field] for field in order),
        price=paths[prefix + "price"],
        quantity=paths[prefix + "quantity"],
        name=paths[prefix + "name"],
        category=paths[prefix + "category"],
    )


def _stripped(
    mappings: Mapping[str, str], phone_field: str | None
) -> tuple[frozenset[str], tuple[Path, ...]]:
    """Property keys (top level) and nested property paths to keep out of
    custom_data: the default identity sources and every mapped identity
    source that lives under ``properties``."""
    keys = set(_ALWAYS_STRIPPED)
    nested: list[Path] = []
    targets = [phone_field] if phone_field else []
    targets += [
        target.removeprefix("properties.")
        for source, target in mappings.items()
        if _ALIASES.get(source, source) in _IDENTITY_PATHS and target.startswith("properties.")
    ]
    for target in targets:
        path = tuple(target.split("."))
        if len(path) == 1:
            keys.add(path[0])
        else:
            nested.append(path)
    return frozenset(keys), tuple(nested)


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
        relative = source.startswith(_PRODUCT_PREFIX)
        example = (
            "variant_sku (relative to each product)" if relative else "properties.customer.email"
        )
        return f"{source}: target {target!r} is not a dot path such as {example}"
    return None


# --- message access and value coercion (hot path) ---------------------------


def _getter(path: Path) -> Getter:
    """A function reading ``path`` from a message (nested objects are dicts,
    as JSON decoding makes them); specialised by depth because path reads
    are most of the work of mapping an event."""
    if len(path) == 1:
        (a,) = path
        return lambda message: message.get(a)
    if len(path) == 2:
        a, b = path
        return lambda message: _get2(message, a, b)
    if len(path) == 3:
        a, b, c = path
        return lambda message: _get3(message, a, b, c)
    return lambda message: _dig(message, path)


def _get2(message: Mapping[str, Any], a: str, b: str) -> Any:
    value = message.get(a)
    return value.get(b) if isinstance(value, dict) else None


def _get3(message: Mapping[str, Any], a: str, b: str, c: str) -> Any:
    value = message.get(a)
    if not isinstance(value, dict):
        return None
    value = value.get(b)
    return value.get(c) if isinstance(value, dict) else None


def _dig(message: Mapping[str, Any], path: Path) -> Any:
    value: Any = message
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _first(message: Mapping[str, Any], alts: _Sources) -> Any:
    for get in alts:
        value = get(message)
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    """A usable scalar as trimmed text; ``None`` for blanks, bools, containers."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _first_text(message: Mapping[str, Any], alts: _Sources) -> str | None:
    for get in alts:
        text = _text(get(message))
        if text is not None:
            return text
    return None


def _first_hashed(
    message: Mapping[str, Any], alts: tuple[_Alt, ...], normaliser: normalize.Normaliser
) -> str | None:
    # normalize.hashed() inlined: this loop runs for every hashed field.
    for get, word in alts:
        raw = get(message)
        text = raw.strip() if type(raw) is str else _text(raw)
        if text and word is not None:
            text = _word(text, word)
        if not text:
            continue
        if len(text) == 64 and normalize.is_sha256_hex(text):
            return text.lower()
        normalised = normaliser(text)
        if normalised:
            return sha256(normalised.encode()).hexdigest()
    return None


def _word(text: str, index: int) -> str | None:
    """The first (``0``) or second (``1``) word, as the SPEC's name split says."""
    words = text.split()
    return words[index] if len(words) > index else None


def _ip(text: str | None) -> str | None:
    if text is None:
        return None
    if _IPV4.fullmatch(text):
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


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


def _value(raw: Any) -> str | None:
    """``properties.total`` as the decimal string Meta is sent."""
    if isinstance(raw, str):
        text = raw.strip()
        return text if _NUMBER.fullmatch(text) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        text = repr(raw)
        return format(Decimal(text), "f") if "e" in text else text
    return str(raw)


def _number(raw: Any) -> int | float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else None
    if isinstance(raw, str) and _NUMBER.fullmatch(raw.strip()):
        return float(raw)
    return None


def _quantity(raw: Any) -> int | None:
    if isinstance(raw, str):
        text = raw.strip()
        return int(text) if _WHOLE.fullmatch(text) else None
    number = _number(raw)
    if isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number


def _contents(products: list[Any], paths: _ProductPaths) -> dict[str, Any]:
    """content_ids, contents, content_type, content_name, content_category
    and num_items for products read through ``paths``."""
    ids: list[str] = []
    contents: list[dict[str, Any]] = []
    for product in products:
        entry = _content(product, paths)
        if entry is not None:
            ids.append(entry["id"])
            contents.append(entry)
    out: dict[str, Any] = {}
    if ids:
        out["content_ids"] = ids
        out["contents"] = contents
    out["content_type"] = "product" if len(products) == 1 else "product_group"
    for key, alts in (("content_name", paths.name), ("content_category", paths.category)):
        text = _first_text(products[0], alts)
        if text is not None:
            out[key] = text
    out["num_items"] = len(products)
    return out


def _content(product: Any, paths: _ProductPaths) -> dict[str, Any] | None:
    """One ``contents`` entry, or ``None`` for a product without an id."""
    for alts in paths.ids:
        content_id = _first_text(product, alts)
        if content_id is not None:
            break
    else:
        return None
    raw = _first(product, paths.quantity)
    quantity = raw if type(raw) is int else _quantity(raw)
    entry: dict[str, Any] = {"id": content_id, "quantity": 1 if quantity is None else quantity}
    raw = _first(product, paths.price)
    price = raw if type(raw) is int else _number(raw)
    if price is not None:
        entry["item_price"] = price
    return entry


def _without(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data`` without the value at ``path``, copying only the dicts on the
    way down; containers left empty are dropped."""
    head, rest = path[0], path[1:]
    if head not in data:
        return data
    child = data[head]
    if rest:
        if not isinstance(child, dict):
            return data
        pruned = _without(child, rest)
        if pruned is child:
            return data
        copy = dict(data)
        if pruned:
            copy[head] = pruned
        else:
            del copy[head]
        return copy
    copy = dict(data)
    del copy[head]
    return copy


def _filtered(incoming: str, event_name: str) -> str:
    return f"event {incoming!r} (Meta {event_name!r}) is not in the events filter"


def _too_long(event_name: str) -> str:
    return (
        f"custom event name is {len(event_name)} characters long; "
        f"Meta accepts at most {MAX_EVENT_NAME}"
    )
