"""Properties of the mapper that must hold for every input (hypothesis)."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from sidecar.config import DestinationSettings
from sidecar.geo import GeoResult
from sidecar.mapping import Dead, Mapped, Mapper, Skipped

NOW = 1_772_366_400.0
HEX64 = re.compile(r"[0-9a-f]{64}")
HASHED_KEYS = ("em", "ph", "fn", "ln", "ct", "st", "zp", "country")
# Non-personal text present in every payload: a raw value that is part of it
# cannot be searched for.
FIXED_TEXT = (
    "Order Completed Purchase PageView website https://shop.example/p Mozilla/5.0 "
    "fb.1.1772366000000.42 192.0.2.44 m-1 USD product gold s-1 Hat"
)


class StaticGeo:
    def lookup(self, ip: str) -> GeoResult | None:
        return GeoResult(city="Geo City Name", region="GR", country="NL")


def destination(phone_region: str | None) -> DestinationSettings:
    return DestinationSettings(
        pixel_id="1",
        access_token=SecretStr("t"),
        phone_field="phone",
        phone_default_region=phone_region,
    )


MAPPERS = {
    region: Mapper(destination(region), geo=StaticGeo()) for region in (None, "US", "GB", "IE")
}

letters = st.text(
    alphabet=st.characters(categories=("Lu", "Ll", "Lo", "Mn")), min_size=1, max_size=12
)
words = st.lists(letters, min_size=1, max_size=3).map(" ".join)
emails = st.builds(
    lambda local, domain: f"{local}@{domain}.example",
    st.text(alphabet=string.ascii_letters + string.digits + "._+", min_size=1, max_size=15),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
)
phones = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["", "+", "00", "+1 ", "0"]),
    st.text(alphabet="0123456789 -()", min_size=6, max_size=18),
)
postcodes = st.text(alphabet=string.ascii_uppercase + string.digits + " -", min_size=3, max_size=10)


@st.composite
def identities(draw: st.DrawFn) -> dict[str, str]:
    return {
        "email": draw(emails),
        "phone": draw(phones),
        "first_name": draw(words),
        "last_name": draw(words),
        "name": draw(words),
        "city": draw(words),
        "state": draw(words),
        "zipcode": draw(postcodes),
        "country": draw(words),
    }


@st.composite
def messages(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    pii = draw(identities())
    in_properties = draw(st.booleans())
    properties: dict[str, Any] = {"total": draw(st.floats(0, 1e6)), "plan": "gold"}
    traits: dict[str, Any] = {"name": pii["name"], "address": {"country": pii["country"]}}
    address = {"zipcode": pii["zipcode"], "city": pii["city"], "state": pii["state"]}
    person = {"email": pii["email"], "phone": pii["phone"]}
    if in_properties:
        properties |= person | {"first_name": pii["first_name"], "last_name": pii["last_name"]}
        properties["shipping"] = address
    else:
        traits |= person | {"firstName": pii["first_name"], "lastName": pii["last_name"]}
        traits["address"] |= address
    if draw(st.booleans()):
        properties["products"] = [{"sku": "s-1", "price": 3, "name": "Hat"}]
    message = {
        "type": draw(st.sampled_from(["track", "track", "page", "screen"])),
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": draw(st.text(min_size=1, max_size=20)),
        "properties": properties,
        "context": {
            "traits": traits,
            "ip": "192.0.2.44",
            "userAgent": "Mozilla/5.0",
            "page": {"url": "https://shop.example/p"},
            "clientIds": {"fbp": "fb.1.1772366000000.42"},
        },
    }
    return message, pii


def string_values(node: Any) -> Iterator[str]:
    """Every string value (not key) anywhere in a JSON-shaped payload."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_values(value)


def run(message: dict[str, Any], region: str | None = None) -> dict[str, Any]:
    outcome = MAPPERS[region].map(message, received_at=NOW, now=NOW)
    assert isinstance(outcome, Mapped)
    return outcome.payload


regions = st.sampled_from([None, "US", "GB", "IE"])


@settings(max_examples=200, deadline=None)
@given(messages(), regions)
def test_every_hashed_field_is_64_lowercase_hex(generated: Any, region: str | None) -> None:
    message, _ = generated
    user_data = run(message, region)["user_data"]
    for key in HASHED_KEYS:
        if key in user_data:
            assert HEX64.fullmatch(user_data[key]), key
    for value in user_data.get("external_id", []):
        assert HEX64.fullmatch(value)


@settings(max_examples=200, deadline=None)
@given(messages(), regions)
def test_no_raw_personal_value_appears_in_the_payload(generated: Any, region: str | None) -> None:
    message, pii = generated
    values = list(string_values(run(message, region)))
    checked = 0
    for field, raw in pii.items():
        value = raw.strip()
        # Only distinctive values can be searched for: skip ones that are part of
        # the fixed, non-personal text of every payload or short enough to occur
        # inside a hex digest by chance.
        if len(value) < 4 or value in FIXED_TEXT or re.fullmatch(r"[0-9a-f]+", value):
            continue
        assert not any(value in text for text in values), field
        checked += 1
    assume(checked > 0)


@settings(max_examples=100, deadline=None)
@given(messages(), regions)
def test_mapping_is_deterministic(generated: Any, region: str | None) -> None:
    message, _ = generated
    again = Mapper(destination(region), geo=StaticGeo())
    first = run(message, region)
    assert run(message, region) == first
    second = again.map(message, received_at=NOW, now=NOW)
    assert isinstance(second, Mapped)
    assert second.payload == first


@settings(max_examples=150, deadline=None)
@given(messages())
def test_no_field_is_empty_null_or_the_hash_of_nothing(generated: Any) -> None:
    message, _ = generated
    empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    user_data = run(message)["user_data"]
    for key, value in user_data.items():
        assert value not in ("", None, [], empty_hash), key
        if isinstance(value, list):
            assert empty_hash not in value


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "email",
        "phone",
        "first_name",
        "last_name",
        "name",
        "firstName",
        "shipping",
        "address",
        "zipcode",
        "city",
        "state",
        "country",
        "products",
        "sku",
        "price",
        "quantity",
        "total",
        "currency",
        "meta",
        "i18n",
        "fbc",
        "fbp",
        "url",
        "ip",
        "userAgent",
        "traits",
        "page",
        "clientIds",
    ]
)
nested = st.recursive(
    json_values,
    lambda inner: st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]), json_values
    ),
    json_values,
    nested,
    nested,
    json_values,
    json_values,
)
def test_any_json_message_maps_without_raising_to_plain_json(
    kind: Any, event: Any, properties: Any, context: Any, timestamp: Any, user_id: Any
) -> None:
    message = {
        "type": kind,
        "event": event,
        "messageId": "m",
        "properties": properties,
        "context": context,
        "timestamp": timestamp,
        "userId": user_id,
    }
    outcome = MAPPERS["US"].map(message, received_at=NOW, now=NOW)
    assert isinstance(outcome, Mapped | Skipped | Dead)
    if isinstance(outcome, Mapped):
        payload = outcome.payload
        assert json.loads(json.dumps(payload, allow_nan=False)) == payload
        assert type(payload["event_time"]) is int
        assert payload["event_time"] <= NOW
        assert isinstance(payload["user_data"], dict)
