"""Custom data: the ``custom_data`` object of a Meta server event (SPEC §3.4).

Owns what a track call's ``custom_data`` carries: its properties minus every
identity source (those feed ``user_data`` and must never reach Meta unhashed),
``value`` and ``currency``, and the product fields (``content_ids``,
``contents``, ``content_type``, ``content_name``, ``content_category``,
``num_items``) read from ``properties.products`` or, when there is no product
list, from a single product made of the top-level properties. Pure like the
rest of the mapping stage; unmodified nested values are shared with the
message, never copied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sidecar import normalize
from sidecar.paths import (
    ALIASES,
    DEFAULT_PATHS,
    PRODUCT_PREFIX,
    Getter,
    Path,
    Sources,
    first,
    first_text,
    text,
)

if TYPE_CHECKING:
    from sidecar.config import DestinationSettings

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_WHOLE = re.compile(r"\d+")

# Canonical paths that feed user_data: whatever they point at inside
# ``properties`` is personal data and is kept out of custom_data.
_IDENTITY_PATHS = frozenset(
    key
    for key in DEFAULT_PATHS
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
class _ProductPaths:
    ids: Sources  # content-id candidates, preferred first
    price: Getter
    quantity: Getter
    name: Sources
    category: Sources


class CustomDataBuilder:
    """Builds ``custom_data`` for one destination; configured once per Mapper."""

    def __init__(self, paths: dict[str, Sources], dest: DestinationSettings) -> None:
        self._default_currency = dest.default_currency
        self._total = _one(paths["properties.total"])
        self._currency = paths["properties.currency"] + paths["properties.meta.i18n.currency"]
        self._products = _one(paths["properties.products"])
        self._item_paths = _product_paths(paths, PRODUCT_PREFIX, dest.content_id_field)
        self._top_paths = _product_paths(paths, "properties.", dest.content_id_field)
        # A single product made of the top-level properties needs its id there.
        self._top_trigger = paths[f"properties.{dest.content_id_field}"] + paths["properties.sku"]
        self._stripped_keys, self._stripped_paths = _stripped(
            dest.property_mappings, dest.phone_field
        )

    def build(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The ``custom_data`` of a track call."""
        props = message.get("properties")
        data = self._without_identity(props if isinstance(props, dict) else {})
        data["value"] = _value(self._total(message)) or "0"
        data["currency"] = self._currency_of(message)
        items = self._products(message)
        if isinstance(items, list) and items:
            products = [item for item in items if isinstance(item, dict)]
            if products:
                _add_contents(data, products, self._item_paths)
        elif first_text(message, self._top_trigger) is not None:
            _add_contents(data, [message], self._top_paths)
        return data

    def _without_identity(self, props: dict[str, Any]) -> dict[str, Any]:
        data = dict(props)
        for key in self._stripped_keys:  # a handful; cheaper than filtering every key
            data.pop(key, None)
        for path in self._stripped_paths:
            data = _without(data, path)
        return data

    def _currency_of(self, message: Mapping[str, Any]) -> str:
        for get in self._currency:
            found = text(get(message))
            code = normalize.currency(found) if found else None
            if code is not None:
                return code
        return self._default_currency


# --- configuration helpers (run once per Mapper) ---------------------------


def _product_paths(paths: dict[str, Sources], prefix: str, content_id_field: str) -> _ProductPaths:
    order = dict.fromkeys((content_id_field, "sku", "product_id", "variant_id"))
    return _ProductPaths(
        ids=tuple(get for field in order for get in paths[prefix + field]),
        price=_one(paths[prefix + "price"]),
        quantity=_one(paths[prefix + "quantity"]),
        name=paths[prefix + "name"],
        category=paths[prefix + "category"],
    )


def _one(alts: Sources) -> Getter:
    """One getter doing :func:`first` over ``alts``: the getter itself when
    there is only one, as for every path but the ZIP codes."""
    if len(alts) == 1:
        return alts[0]
    return lambda message: first(message, alts)


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
        if ALIASES.get(source, source) in _IDENTITY_PATHS and target.startswith("properties.")
    ]
    for target in targets:
        path = tuple(target.split("."))
        if len(path) == 1:
            keys.add(path[0])
        else:
            nested.append(path)
    return frozenset(keys), tuple(nested)


# --- hot path ----------------------------------------------------------------


def _value(raw: Any) -> str | None:
    """``properties.total`` as the decimal string Meta is sent."""
    if type(raw) is float and math.isfinite(raw):  # the usual case
        decimal = repr(raw)
        return format(Decimal(decimal), "f") if "e" in decimal else decimal
    if isinstance(raw, str):
        stripped = raw.strip()
        return stripped if _NUMBER.fullmatch(stripped) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        decimal = repr(raw)
        return format(Decimal(decimal), "f") if "e" in decimal else decimal
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
        stripped = raw.strip()
        return int(stripped) if _WHOLE.fullmatch(stripped) else None
    number = _number(raw)
    if isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number


def _add_contents(out: dict[str, Any], products: list[Any], paths: _ProductPaths) -> None:
    """Set content_ids, contents, content_type, content_name, content_category
    and num_items in ``out`` for products read through ``paths``."""
    ids: list[str] = []
    contents: list[dict[str, Any]] = []
    for product in products:
        entry = _content(product, paths)
        if entry is not None:
            ids.append(entry["id"])
            contents.append(entry)
    if ids:
        out["content_ids"] = ids
        out["contents"] = contents
    out["content_type"] = "product" if len(products) == 1 else "product_group"
    found = first_text(products[0], paths.name)
    if found is not None:
        out["content_name"] = found
    found = first_text(products[0], paths.category)
    if found is not None:
        out["content_category"] = found
    out["num_items"] = len(products)


def _content(product: Any, paths: _ProductPaths) -> dict[str, Any] | None:
    """One ``contents`` entry, or ``None`` for a product without an id."""
    content_id = first_text(product, paths.ids)
    if content_id is None:
        return None
    raw = paths.quantity(product)
    quantity = raw if type(raw) is int else _quantity(raw)
    entry: dict[str, Any] = {"id": content_id, "quantity": 1 if quantity is None else quantity}
    raw = paths.price(product)
    if type(raw) is int or (type(raw) is float and math.isfinite(raw)):
        price: int | float | None = raw
    else:
        price = _number(raw)
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
