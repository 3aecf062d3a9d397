"""Behaviour of the mapper beyond the golden corpus, and of property mappings."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from sidecar.config import DestinationSettings
from sidecar.geo import GeoResult
from sidecar.mapping import (
    CANONICAL_PATHS,
    Dead,
    Mapped,
    Mapper,
    Skipped,
    validate_property_mappings,
)
from sidecar.normalize import sha256_hex

NOW = 1_772_366_400.0


def dest(**overrides: Any) -> DestinationSettings:
    return DestinationSettings(pixel_id="1", access_token=SecretStr("t"), **overrides)


def mapped(message: dict[str, Any], mapper: Mapper | None = None, **config: Any) -> dict[str, Any]:
    mapper = mapper or Mapper(dest(**config))
    outcome = mapper.map(message, received_at=NOW - 1, now=NOW)
    assert isinstance(outcome, Mapped), outcome
    return outcome.payload


def track(event: str = "Order Completed", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "messageId": "m-1", **fields}


class CountingGeo:
    def __init__(self, result: GeoResult | None) -> None:
        self.result = result
        self.calls: list[str] = []

    def lookup(self, ip: str) -> GeoResult | None:
        self.calls.append(ip)
        return self.result


# --- outcomes -----------------------------------------------------------------


def test_mapping_does_not_modify_the_message() -> None:
    message = track(
        properties={
            "email": "a@b.co",
            "customer": {"email": "c@d.co", "id": 1},
            "products": [{"sku": "x"}],
        },
        context={"traits": {"name": "A B"}, "ip": "192.0.2.1"},
    )
    before = copy.deepcopy(message)
    mapped(message, property_mappings={"properties.email": "properties.customer.email"})
    assert message == before


def test_unsupported_message_type_is_dead() -> None:
    outcome = Mapper(dest()).map({"type": "flush", "messageId": "m"}, received_at=NOW, now=NOW)
    assert outcome == Dead(event_name="flush", reason="unsupported message type 'flush'")


@pytest.mark.parametrize("kind", [None, 7, ["track"], {"t": "track"}])
def test_message_type_that_is_not_a_string_is_dead(kind: Any) -> None:
    outcome = Mapper(dest()).map({"type": kind, "messageId": "m"}, received_at=NOW, now=NOW)
    assert isinstance(outcome, Dead)
    assert outcome.reason.startswith("unsupported message type")


@pytest.mark.parametrize("event", [None, "", "   ", 42])
def test_track_without_event_name_is_dead(event: Any) -> None:
    message = {"type": "track", "messageId": "m", "event": event}
    outcome = Mapper(dest()).map(message, received_at=NOW, now=NOW)
    assert isinstance(outcome, Dead)
    assert outcome.reason == "track call without an event name"


def test_filter_is_checked_before_the_name_length() -> None:
    outcome = Mapper(dest(events_filter=("Purchase",))).map(
        track("x" * 60), received_at=NOW, now=NOW
    )
    assert isinstance(outcome, Skipped)


def test_filter_given_as_comma_list_matches_custom_names_case_insensitively() -> None:
    mapper = Mapper(dest(events_filter="Order Completed, newsletter signup"))
    assert isinstance(mapper.map(track("Newsletter Signup"), received_at=NOW, now=NOW), Mapped)
    assert isinstance(mapper.map(track("Other"), received_at=NOW, now=NOW), Skipped)


def test_custom_name_is_sent_exactly_as_given() -> None:
    assert mapped(track(" my Event "))["event_name"] == " my Event "


# --- common fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1_772_366_000, 1_772_366_000),
        (1_772_366_000.9, 1_772_366_000),
        (1_772_366_000_123, 1_772_366_000),
        ("2026-03-01T11:53:20Z", 1_772_366_000),
        ("2026-03-01T11:53:20", 1_772_366_000),
        ("2026-03-01 11:53:20.5+00:00", 1_772_366_000),
    ],
)
def test_event_time_accepts_iso_strings_and_epoch_numbers(timestamp: Any, expected: int) -> None:
    assert mapped(track(timestamp=timestamp))["event_time"] == expected


@pytest.mark.parametrize("bad", ["yesterday", "", True, None, {"t": 1}, float("nan")])
def test_unusable_timestamp_falls_back_to_the_next_source(bad: Any) -> None:
    message = track(timestamp=bad, originalTimestamp="2026-03-01T11:53:20Z")
    assert mapped(message)["event_time"] == 1_772_366_000


def test_event_id_is_the_message_id() -> None:
    assert mapped(track(messageId="abc-123"))["event_id"] == "abc-123"


def test_track_event_source_url_ignores_properties_url() -> None:
    payload = mapped(track(properties={"url": "https://x.example/"}))
    assert "event_source_url" not in payload
    assert payload["custom_data"]["url"] == "https://x.example/"


# --- user_data ------------------------------------------------------------------


def test_user_data_is_present_even_when_empty() -> None:
    assert mapped({"type": "page", "messageId": "m"})["user_data"] == {}


@pytest.mark.parametrize("ip", ["not-an-ip", "300.1.1.1", "01.2.3.4", "1.2.3", ""])
def test_invalid_ip_is_left_out(ip: str) -> None:
    assert "client_ip_address" not in mapped(track(context={"ip": ip}))["user_data"]


def test_ipv6_is_sent_in_canonical_form() -> None:
    payload = mapped(track(context={"ip": " 2001:0DB8:0000::0001 "}))
    assert payload["user_data"]["client_ip_address"] == "2001:db8::1"


def test_same_user_and_anonymous_id_give_one_external_id() -> None:
    payload = mapped(track(userId="same", anonymousId="same"))
    assert payload["user_data"]["external_id"] == [sha256_hex("same")]


def test_source_that_normalises_to_nothing_falls_through_to_the_next() -> None:
    message = track(properties={"first_name": "!!!"}, context={"traits": {"firstName": "Ann"}})
    assert mapped(message)["user_data"]["fn"] == sha256_hex("ann")


def test_non_text_identity_values_are_ignored() -> None:
    message = track(properties={"email": {"value": "a@b.co"}, "first_name": ["Ann"]})
    assert mapped(message)["user_data"] == {}


def test_numeric_zip_code_is_read_as_text() -> None:
    message = track(properties={"shipping": {"zipcode": 94107}})
    assert mapped(message)["user_data"]["zp"] == sha256_hex("94107")


def test_phone_field_may_be_a_nested_path() -> None:
    message = track(properties={"contact": {"phone": "+1 650 555 1212", "pref": "sms"}})
    payload = mapped(message, phone_field="contact.phone")
    assert payload["user_data"]["ph"] == sha256_hex("16505551212")
    assert payload["custom_data"]["contact"] == {"pref": "sms"}


def test_geo_is_not_consulted_when_the_event_has_a_full_location() -> None:
    geo = CountingGeo(GeoResult(city="Elsewhere", region="ZZ", country="FR"))
    message = track(
        context={
            "ip": "192.0.2.1",
            "traits": {"address": {"city": "Austin", "state": "TX", "country": "US"}},
        }
    )
    payload = mapped(message, Mapper(dest(), geo=geo))
    assert geo.calls == []
    assert payload["user_data"]["ct"] == sha256_hex("austin")


def test_geo_is_not_consulted_without_a_valid_ip() -> None:
    geo = CountingGeo(GeoResult(city="X", region=None, country=None))
    mapped(track(context={"ip": "nope"}), Mapper(dest(), geo=geo))
    assert geo.calls == []


def test_geo_values_are_normalised_before_hashing() -> None:
    geo = CountingGeo(GeoResult(city="Saint-Étienne", region="ARA", country="FR"))
    payload = mapped(track(context={"ip": "192.0.2.1"}), Mapper(dest(), geo=geo))
    assert payload["user_data"]["ct"] == sha256_hex("saintétienne")
    assert payload["user_data"]["st"] == sha256_hex("ara")
    assert payload["user_data"]["country"] == sha256_hex("fr")


def test_geo_without_an_answer_adds_nothing() -> None:
    payload = mapped(track(context={"ip": "192.0.2.1"}), Mapper(dest(), geo=CountingGeo(None)))
    assert payload["user_data"] == {"client_ip_address": "192.0.2.1"}


# --- custom_data ------------------------------------------------------------------


def test_page_and_screen_calls_have_no_custom_data() -> None:
    for kind in ("page", "screen"):
        payload = mapped({"type": kind, "messageId": "m", "properties": {"total": 5}})
        assert "custom_data" not in payload


def test_identity_properties_never_reach_custom_data() -> None:
    props = {
        "email": "a@b.co",
        "phone": "+1 650 555 1212",
        "mobile": "+1 650 555 1313",
        "first_name": "Ann",
        "last_name": "Lee",
        "shipping": {"city": "Austin"},
        "fbc": "fb.1.1.abc",
        "fbp": "fb.1.1.123",
        "coupon": "SPRING",
    }
    payload = mapped(track(properties=props), phone_field="mobile")
    assert payload["custom_data"] == {"coupon": "SPRING", "value": "0", "currency": "USD"}


def test_mapped_identity_paths_are_removed_and_emptied_parents_dropped() -> None:
    props = {
        "buyer": {"contact": {"mail": "a@b.co"}, "tier": "gold"},
        "addr": {"zip": "10001"},
        "ip_seen": "192.0.2.1",
    }
    config = {
        "properties.email": "properties.buyer.contact.mail",
        "context.traits.address.zipcode": "properties.addr.zip",
        "context.ip": "properties.ip_seen",
    }
    payload = mapped(track(properties=props), property_mappings=config)
    assert payload["custom_data"] == {"buyer": {"tier": "gold"}, "value": "0", "currency": "USD"}
    assert payload["user_data"]["em"] == sha256_hex("a@b.co")
    assert payload["user_data"]["zp"] == sha256_hex("10001")
    assert payload["user_data"]["client_ip_address"] == "192.0.2.1"


@pytest.mark.parametrize(
    ("total", "value"),
    [
        (10, "10"),
        (10.5, "10.5"),
        (1e-7, "0.0000001"),
        (1e21, "1000000000000000000000"),
        ("-3.50", "-3.50"),
        (".5", ".5"),
        ("1,299.00", "0"),
        (True, "0"),
        (None, "0"),
        (float("inf"), "0"),
        ([1], "0"),
    ],
)
def test_value_is_a_decimal_string(total: Any, value: str) -> None:
    props = {"total": total} if total is not None else {}
    assert mapped(track(properties=props))["custom_data"]["value"] == value


def test_currency_falls_through_invalid_sources() -> None:
    props = {"currency": "??", "meta": {"i18n": {"currency": "cad"}}}
    assert mapped(track(properties=props))["custom_data"]["currency"] == "CAD"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(3, 3), (3.0, 3), ("4", 4), (" 2 ", 2), (2.5, 1), ("two", 1), (None, 1), (True, 1), (0, 0)],
)
def test_product_quantity(quantity: Any, expected: int) -> None:
    product: dict[str, Any] = {"sku": "s"}
    if quantity is not None:
        product["quantity"] = quantity
    payload = mapped(track(properties={"products": [product]}))
    assert payload["custom_data"]["contents"][0]["quantity"] == expected


@pytest.mark.parametrize("price", ["free", None, float("nan"), True, {"amount": 1}])
def test_unusable_product_price_is_left_out(price: Any) -> None:
    payload = mapped(track(properties={"products": [{"sku": "s", "price": price}]}))
    assert payload["custom_data"]["contents"] == [{"id": "s", "quantity": 1}]


def test_products_that_are_not_objects_are_ignored() -> None:
    payload = mapped(track(properties={"products": ["s-1", None, {"sku": "s-2"}]}))
    custom = payload["custom_data"]
    assert custom["content_ids"] == ["s-2"]
    assert custom["num_items"] == 1
    assert custom["content_type"] == "product"


def test_empty_products_array_falls_back_to_top_level_sku() -> None:
    payload = mapped(track(properties={"products": [], "sku": "top"}))
    assert payload["custom_data"]["content_ids"] == ["top"]


def test_no_products_and_no_sku_gives_no_content_fields() -> None:
    custom = mapped(track(properties={"name": "Boots", "price": 5}))["custom_data"]
    assert not {"content_ids", "contents", "content_type", "num_items"} & set(custom)


def test_top_level_product_uses_the_configured_content_id_field() -> None:
    props = {"sku": "S", "product_id": "P"}
    payload = mapped(track("Product Viewed", properties=props), content_id_field="product_id")
    assert payload["custom_data"]["content_ids"] == ["P"]


def test_top_level_product_triggered_by_the_configured_field_alone() -> None:
    payload = mapped(track(properties={"variant_id": 7}), content_id_field="variant_id")
    assert payload["custom_data"]["content_ids"] == ["7"]


def test_payload_is_plain_json() -> None:
    message = track(
        userId="u",
        properties={"total": 1.5, "products": [{"sku": "a", "price": 1.5}]},
        context={"ip": "192.0.2.1", "traits": {"email": "a@b.co"}},
    )
    payload = mapped(message)
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload


# --- property mappings --------------------------------------------------------------


def test_valid_property_mappings_have_no_problems() -> None:
    good = {
        "properties.email": "properties.customer.email",
        "properties.total": "properties.revenue",
        "properties.products": "properties.line_items",
        "properties.products[].sku": "variant_sku",
        "properties.products[].price": "pricing.unit",
        "context.traits.address.postalCode": "context.traits.address.zip",
        "userId": "context.traits.customer_id",
        "properties.phone": "properties.Mobile Number",
    }
    assert validate_property_mappings(good) == []


def test_unknown_canonical_path_is_reported_with_a_suggestion() -> None:
    problems = validate_property_mappings({"properties.emial": "properties.x"})
    assert problems == [
        "property_mappings: unknown canonical path 'properties.emial' "
        "(did you mean 'properties.email'?)"
    ]


def test_unknown_canonical_path_without_a_close_match_points_at_the_docs() -> None:
    [problem] = validate_property_mappings({"zzz": "properties.x"})
    assert "see docs/mapping.md" in problem


def test_message_id_cannot_be_remapped() -> None:
    [problem] = validate_property_mappings({"messageId": "properties.order_id"})
    assert "event_id is always the messageId" in problem


@pytest.mark.parametrize(
    "target",
    ["", " ", "properties..email", ".email", "email.", " properties.email", "items[].sku", "a. b"],
)
def test_bad_target_is_reported(target: str) -> None:
    [problem] = validate_property_mappings({"properties.email": target})
    assert problem.startswith("property_mappings: properties.email: target")


def test_product_field_target_must_be_relative() -> None:
    [problem] = validate_property_mappings(
        {"properties.products[].sku": "properties.line_items[].variant_sku"}
    )
    assert "relative to each product" in problem


def test_non_string_target_is_reported() -> None:
    problems = validate_property_mappings({"properties.email": 5})  # type: ignore[dict-item]
    assert problems == ["property_mappings: 'properties.email': both sides must be paths (strings)"]


def test_one_line_per_problem() -> None:
    problems = validate_property_mappings(
        {"nope": "a", "properties.total": "", "properties.email": "properties.e"}
    )
    assert len(problems) == 2


def test_destination_settings_reject_bad_mappings_at_start_up() -> None:
    with pytest.raises(
        ValidationError, match=re.escape("unknown canonical path 'properties.nope'")
    ):
        dest(property_mappings={"properties.nope": "properties.x"})


def test_every_canonical_path_can_be_remapped() -> None:
    for canonical in CANONICAL_PATHS:
        target = "x" if canonical.startswith("properties.products[].") else "properties.x"
        mapper = Mapper(dest(property_mappings={canonical: target}))
        assert isinstance(mapper.map(track(), received_at=NOW, now=NOW), Mapped)


def test_remapped_timestamp_and_page_url() -> None:
    config = {"timestamp": "properties.occurred_at", "context.page.url": "properties.page_url"}
    message = track(
        timestamp="2020-01-01T00:00:00Z",
        properties={"occurred_at": "2026-03-01T11:53:20Z", "page_url": "https://a.example/"},
    )
    payload = mapped(message, property_mappings=config)
    assert payload["event_time"] == 1_772_366_000
    assert payload["event_source_url"] == "https://a.example/"


def test_remapped_product_fields() -> None:
    config = {
        "properties.products": "properties.items",
        "properties.products[].sku": "ref.code",
        "properties.products[].quantity": "qty",
        "properties.products[].name": "title",
        "properties.products[].category": "department",
    }
    items = [{"ref": {"code": "R1"}, "qty": 2, "title": "Hat", "department": "Hats"}]
    custom = mapped(track(properties={"items": items}), property_mappings=config)["custom_data"]
    assert custom["contents"] == [{"id": "R1", "quantity": 2}]
    assert custom["content_name"] == "Hat"
    assert custom["content_category"] == "Hats"
