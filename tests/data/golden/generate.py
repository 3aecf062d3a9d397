"""Writes the golden event → payload corpus next to this file.

Run ``.venv/bin/python tests/data/golden/generate.py`` after changing a case;
``tests/test_mapping_golden.py`` checks the mapper against the JSON files.

The expected payloads are written here by hand. Hashed fields are given as
the *normalised* string a person derives from Meta's rules (SPEC §3.3) and
hashed with plain ``hashlib``, never with ``sidecar.normalize``, so the corpus
is an independent statement of the contract. A few hashes are checked against
the published test vectors (Appendix A of the Meta reference) below.

Each file holds ``description``, ``config`` (DestinationSettings overrides),
optional ``geo`` (IP → {city, region, country} for a stand-in lookup),
``message``, ``received_at``, ``now`` and ``expected``:
``{"outcome": "mapped", "event_name", "payload"}`` or
``{"outcome": "skipped"|"dead", "event_name", "reason"}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RECEIVED = 1772366400  # 2026-03-01T12:00:00Z
NOW = RECEIVED + 5
TS = "2026-03-01T11:59:30.000Z"
TS_EPOCH = 1772366370

APPENDIX_A = {
    "john_smith@gmail.com": "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    "16505551212": "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    "mary": "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
    "정": "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14",
    "valéry": "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c",
    "us": "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
}

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"
IP = "198.51.100.23"
URL = "https://shop.example.com/checkout"
FBP = "fb.1.1772366000000.1122334455"
FBC = "fb.1.1772366000000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"


def H(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


for _plain, _digest in APPENDIX_A.items():
    assert H(_plain) == _digest, _plain


_ids = iter(range(1, 1000))


def msg(kind: str, event: str | None = None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": kind, "messageId": f"golden-{next(_ids):03d}"}
    if event is not None:
        message["event"] = event
    message.setdefault("timestamp", TS)
    message.update(fields)
    return message


def payload(
    event_name: str,
    message: dict[str, Any],
    user_data: dict[str, Any],
    custom_data: dict[str, Any] | None = None,
    *,
    event_time: int = TS_EPOCH,
    url: str | None = None,
    action_source: str = "website",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_name": event_name,
        "event_time": event_time,
        "event_id": message["messageId"],
        "action_source": action_source,
    }
    if url is not None:
        out["event_source_url"] = url
    out["user_data"] = user_data
    if custom_data is not None:
        out["custom_data"] = custom_data
    return out


def mapped(event_name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"outcome": "mapped", "event_name": event_name, "payload": body}


def signup(message: dict[str, Any], user_data: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The expected outcome of a ``Signup`` track call with no products or value."""
    return mapped("Signup", payload("Signup", message, user_data, dict(NO_PRODUCTS), **kw))


CASES: list[dict[str, Any]] = []


def case(
    slug: str,
    description: str,
    message: dict[str, Any],
    expected: dict[str, Any],
    *,
    config: dict[str, Any] | None = None,
    geo: dict[str, Any] | None = None,
    received_at: float = RECEIVED,
    now: float = NOW,
) -> None:
    entry: dict[str, Any] = {
        "description": description,
        "config": config or {},
        "message": message,
        "received_at": received_at,
        "now": now,
        "expected": expected,
    }
    if geo is not None:
        entry["geo"] = geo
    CASES.append({"slug": slug, **entry})


def web_context(**extra: Any) -> dict[str, Any]:
    return {"ip": IP, "userAgent": UA, "page": {"url": URL}, **extra}


WEB_USER = {"client_ip_address": IP, "client_user_agent": UA}
NO_PRODUCTS = {"value": "0", "currency": "USD"}

# --- §3.1 event names -----------------------------------------------------

m = msg("page", context=web_context(), properties={"title": "Home"})
case(
    "page_view",
    "page → PageView; page url, ip and user agent; no custom_data on page calls",
    m,
    mapped("PageView", payload("PageView", m, dict(WEB_USER), url=URL)),
)

m = msg("page", properties={"url": "https://shop.example.com/", "email": "a@b.co"})
case(
    "page_url_from_properties",
    "page call without context.page.url uses properties.url; em from properties",
    m,
    mapped(
        "PageView",
        payload("PageView", m, {"em": H("a@b.co")}, url="https://shop.example.com/"),
    ),
)

m = msg("screen", properties={"name": "Cart", "url": "app://cart"}, context={"ip": IP})
case(
    "screen_view",
    "screen → PageView; properties.url is not a source for screen calls",
    m,
    mapped("PageView", payload("PageView", m, {"client_ip_address": IP})),
)

TRACK_TABLE = [
    ("checkout_started", "Checkout Started", "InitiateCheckout"),
    ("product_added", "Product Added", "AddToCart"),
    ("product_viewed", "Product Viewed", "ViewContent"),
    ("products_searched", "Products Searched", "Search"),
    ("product_clicked", "Product Clicked", "ViewContent"),
    ("subscription_created", "Subscription Created", "Subscribe"),
]
for slug, incoming, meta in TRACK_TABLE:
    m = msg("track", incoming, context=web_context(), properties={"query": "boots"})
    case(
        slug,
        f"track {incoming!r} → {meta}; custom_data keeps plain properties, value '0', USD",
        m,
        mapped(meta, payload(meta, m, dict(WEB_USER), {"query": "boots", **NO_PRODUCTS}, url=URL)),
    )

m = msg("track", "Newsletter Signup", userId="u-42")
case(
    "custom_event_unchanged",
    "any other track name is sent unchanged",
    m,
    mapped(
        "Newsletter Signup",
        payload("Newsletter Signup", m, {"external_id": [H("u-42")]}, dict(NO_PRODUCTS)),
    ),
)

m = msg("track", "  order COMPLETED ", properties={"total": 10})
case(
    "event_name_case_and_spaces",
    "table matching ignores case and surrounding spaces",
    m,
    mapped("Purchase", payload("Purchase", m, {}, {"total": 10, "value": "10", "currency": "USD"})),
)

name50 = "Loyalty Programme Tier Upgrade Completed Gold 2026"
assert len(name50) == 50
m = msg("track", name50)
case(
    "custom_name_50_chars",
    "a custom name of exactly 50 characters is sent",
    m,
    mapped(name50, payload(name50, m, {}, dict(NO_PRODUCTS))),
)

name51 = name50 + "!"
m = msg("track", name51)
case(
    "custom_name_51_chars_dead",
    "a custom name over 50 characters is a dead letter",
    m,
    {
        "outcome": "dead",
        "event_name": name51,
        "reason": "custom event name is 51 characters long; Meta accepts at most 50",
    },
)

m = msg("track", "Product Viewed")
case(
    "filtered_out",
    "events filter names neither the incoming nor the Meta name → skipped",
    m,
    {
        "outcome": "skipped",
        "event_name": "ViewContent",
        "reason": "event 'Product Viewed' (Meta 'ViewContent') is not in the events filter",
    },
    config={"events_filter": ["Order Completed", "PageView"]},
)

m = msg("track", "Order Completed", properties={"total": "25.00"})
case(
    "filter_matches_meta_name",
    "events filter matches the Meta name, case-insensitively",
    m,
    mapped(
        "Purchase",
        payload("Purchase", m, {}, {"total": "25.00", "value": "25.00", "currency": "USD"}),
    ),
    config={"events_filter": ["purchase"]},
)

m = msg("page")
case(
    "filter_matches_incoming_name",
    "events filter matches the incoming name (page) case-insensitively",
    m,
    mapped("PageView", payload("PageView", m, {})),
    config={"events_filter": [" PAGE "]},
)

for kind in ("identify", "group", "alias"):
    m = msg(kind, userId="u-1", traits={"email": "x@y.z"})
    case(
        f"{kind}_skipped",
        f"{kind} calls are acknowledged and not sent",
        m,
        {"outcome": "skipped", "event_name": kind, "reason": f"{kind} calls are not sent to Meta"},
    )

# --- §3.2 common fields -----------------------------------------------------

m = msg("track", "Signup", originalTimestamp="2026-03-01T11:58:00Z")
del m["timestamp"]
case(
    "time_from_original_timestamp",
    "without timestamp, originalTimestamp gives event_time",
    m,
    signup(m, {}, event_time=1772366280),
)

m = msg("track", "Signup", timestamp="2026-03-01T13:30:00+01:30", originalTimestamp=TS)
case(
    "time_with_offset",
    "timestamp wins over originalTimestamp; UTC offsets are honoured",
    m,
    signup(m, {}, event_time=RECEIVED),
)

m = msg("track", "Signup")
del m["timestamp"]
case(
    "time_from_receive_time",
    "without timestamps, the receive time (floored to seconds) is used",
    m,
    signup(m, {}, event_time=RECEIVED - 60),
    received_at=RECEIVED - 59.7,
)

m = msg("track", "Signup", timestamp="2026-03-02T00:00:00Z")
case(
    "time_in_future_clamped",
    "a timestamp in the future is clamped to now",
    m,
    signup(m, {}, event_time=NOW),
)

m = msg("screen", context={"device": {"type": "ios"}})
expected = payload("PageView", m, {}, action_source="app")
expected["app_data"] = {"advertiser_tracking_enabled": 0, "extinfo": ["i2", *[""] * 15]}
case(
    "action_source_configured",
    "action_source comes from the configuration; app events carry app_data",
    m,
    mapped("PageView", expected),
    config={"action_source": "app"},
)

m = msg(
    "track",
    "Order Completed",
    userId="user-app-1",
    properties={"total": 12.5, "currency": "usd"},
    context={
        "os": {"name": "Android", "version": "14"},
        "app": {"namespace": "com.shop.app", "version": "2.1", "build": 210},
        "device": {"model": "Pixel 8", "adTrackingEnabled": True},
        "screen": {"width": 1080, "height": 2400, "density": 2.625},
        "network": {"carrier": "Vodafone"},
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
    },
)
expected = payload(
    "Purchase", m, {"external_id": [H("user-app-1")]},
    {"total": 12.5, "value": "12.5", "currency": "USD"}, action_source="app",
)
expected["app_data"] = {
    "advertiser_tracking_enabled": 1,
    "extinfo": ["a2", "com.shop.app", "2.1", "210", "14", "Pixel 8", "de-DE", "",
                "Vodafone", "1080", "2400", "2.625", "", "", "", "Europe/Berlin"],
}
case(
    "app_event_device_context",
    "action_source app: app_data.extinfo from Segment's mobile context (SPEC silent)",
    m,
    mapped("Purchase", expected),
    config={"action_source": "app"},
)

m = msg(
    "track",
    "Signup",
    properties={"email": "  Jane.Doe+shop@Example.COM "},
    context={"traits": {"email": "other@example.com"}},
)
case(
    "email_properties_win",
    "properties.email wins over context.traits.email; trimmed and lower-cased; "
    "removed from custom_data",
    m,
    signup(m, {"em": H("jane.doe+shop@example.com")}),
)

m = msg("track", "Signup", context={"traits": {"email": "John_Smith@gmail.com"}})
case(
    "email_from_traits",
    "context.traits.email when properties has none (Appendix A vector)",
    m,
    signup(m, {"em": APPENDIX_A["john_smith@gmail.com"]}),
)

prehashed = H("pre@hashed.example").upper()
m = msg("track", "Signup", properties={"email": f"  {prehashed} "})
case(
    "email_prehashed",
    "a value that already is 64 hex characters passes through, lower-cased",
    m,
    signup(m, {"em": prehashed.lower()}),
)

m = msg("track", "Signup", properties={"email": "", "first_name": "   "})
case(
    "blank_values_absent",
    "blank sources give absent fields, never hashes of empty strings",
    m,
    signup(m, {}),
)

PHONE_CASES = [
    ("phone_e164", "+1 (650) 555-1212", None, "16505551212", "E.164 input: digits only"),
    ("phone_local_with_region", "(650) 555-1212", "US", "16505551212", "local number + region US"),
    ("phone_local_no_region", "(650) 555-1212", None, "6505551212", "local number, no region"),
    ("phone_00_prefix", "0044 7911 123456", None, "447911123456", "00 international prefix"),
    ("phone_uk_local_region_gb", "07911 123456", "GB", "447911123456", "UK trunk 0 + region GB"),
    ("phone_ie_local_region_ie", "087 123 4567", "IE", "353871234567", "Irish mobile + region IE"),
    ("phone_bracketed_trunk", "+44 (0)20 7946 0958", None, "442079460958", "+44 (0) trunk dropped"),
    ("phone_has_country_code_region_us", "447911123456", "US", "447911123456", "not a US number"),
]
for slug, raw, region, normalised, what in PHONE_CASES:
    m = msg("track", "Lead", properties={"phone": raw, "plan": "pro"})
    config: dict[str, Any] = {"phone_field": "phone"}
    if region:
        config["phone_default_region"] = region
    case(
        slug,
        f"ph: {what}; the phone property is removed from custom_data",
        m,
        mapped("Lead", payload("Lead", m, {"ph": H(normalised)}, {"plan": "pro", **NO_PRODUCTS})),
        config=config,
    )

m = msg("track", "Lead", context={"traits": {"mobile": "+353 87 123 4567"}})
case(
    "phone_from_traits_custom_field",
    "ph from context.traits.<phone field> with a custom field name",
    m,
    mapped("Lead", payload("Lead", m, {"ph": H("353871234567")}, NO_PRODUCTS)),
    config={"phone_field": "mobile"},
)

m = msg("track", "Lead", properties={"phone": "+1 650 555 1212", "plan": "pro"})
case(
    "phone_without_phone_field",
    "no phone field configured: no ph, and the raw phone property is still not forwarded",
    m,
    mapped("Lead", payload("Lead", m, {}, {"plan": "pro", **NO_PRODUCTS})),
)

# --- names ----------------------------------------------------------------

m = msg("track", "Signup", context={"traits": {"name": "Mary Ann Smith"}})
case(
    "name_three_words",
    "traits.name 'Mary Ann Smith': fn = first word, ln = second word (SPEC 3.2)",
    m,
    signup(m, {"fn": APPENDIX_A["mary"], "ln": H("ann")}),
)

m = msg("track", "Signup", context={"traits": {"name": "Cher", "lastName": "Sarkisian"}})
case(
    "name_single_word",
    "a one-word traits.name gives fn only; ln falls back to traits.lastName",
    m,
    signup(m, {"fn": H("cher"), "ln": H("sarkisian")}),
)

m = msg("track", "Signup", context={"traits": {"first_name": "Zoë", "last_name": "Ó Súilleabháin"}})
case(
    "name_traits_snake_case_accented",
    "traits.first_name/last_name; accents kept (NFC), spaces and punctuation removed",
    m,
    signup(m, {"fn": H("zoë"), "ln": H("ósúilleabháin")}),
)

m = msg(
    "track",
    "Signup",
    properties={"first_name": "Vale\u0301ry", "last_name": "Giscard d'Estaing"},
    context={"traits": {"name": "Someone Else"}},
)
case(
    "name_properties_win_nfc",
    "properties names win over traits; decomposed accent composed to NFC (Appendix A vector); "
    "apostrophe and spaces removed",
    m,
    signup(m, {"fn": APPENDIX_A["valéry"], "ln": H("giscarddestaing")}),
)

m = msg("track", "Signup", context={"traits": {"firstName": "정", "lastName": "김"}})
case(
    "name_korean",
    "non-Latin names are kept as UTF-8 (Appendix A vector)",
    m,
    signup(m, {"fn": APPENDIX_A["정"], "ln": H("김")}),
)

m = msg("track", "Signup", properties={"first_name": "J.-P.", "last_name": "O'Brien-Smith"})
case(
    "name_punctuation",
    "punctuation (dots, hyphens, apostrophes) removed from names",
    m,
    signup(m, {"fn": H("jp"), "ln": H("obriensmith")}),
)

# --- addresses --------------------------------------------------------------

m = msg(
    "track",
    "Signup",
    properties={
        "shipping": {"zipcode": "94107-1234", "city": "San Francisco", "state": "California"}
    },
    context={"traits": {"address": {"country": "United States", "city": "Oakland"}}},
)
case(
    "address_us_zip_plus_4",
    "ZIP+4 keeps 5 digits; shipping wins over traits; state and country names become codes",
    m,
    signup(m, {"ct": H("sanfrancisco"), "st": H("ca"), "zp": H("94107"),
               "country": APPENDIX_A["us"]}),
)

m = msg(
    "track",
    "Signup",
    context={
        "traits": {
            "address": {
                "postalCode": "SW1A 1AA",
                "city": "London",
                "state": "England",
                "country": "UK",
            }
        }
    },
)
case(
    "address_uk_postcode",
    "UK postcode lower-cased without spaces; postalCode key accepted; 'UK' → gb",
    m,
    signup(m, {"ct": H("london"), "st": H("england"), "zp": H("sw1a1aa"), "country": H("gb")}),
)

m = msg(
    "track",
    "Signup",
    context={
        "traits": {
            "address": {
                "postal_code": "D02 X285",
                "city": "Dún Laoghaire",
                "state": "Co. Dublin",
                "country": "Ireland",
            }
        }
    },
)
case(
    "address_irish_eircode",
    "Irish Eircode; postal_code key accepted; accented city kept, spaces and dots removed",
    m,
    signup(m, {"ct": H("dúnlaoghaire"), "st": H("codublin"), "zp": H("d02x285"),
               "country": H("ie")}),
)

m = msg(
    "track",
    "Signup",
    properties={"shipping": {"postalCode": "100-0001", "city": "Chiyoda 1", "state": "13"}},
    context={"traits": {"address": {"country": "JP"}}},
)
case(
    "address_japan",
    "non-US postcode: dash removed; digits removed from city; numeric state code kept",
    m,
    signup(m, {"ct": H("chiyoda"), "st": H("13"), "zp": H("1000001"), "country": H("jp")}),
)

m = msg(
    "track",
    "Signup",
    context={"ip": "203.0.113.77", "traits": {"address": {"city": "Portland"}}},
)
case(
    "geo_fills_only_missing",
    "geo lookup fills st and country; the event's own city wins over geo",
    m,
    signup(m, {"ct": H("portland"), "st": H("wa"), "country": APPENDIX_A["us"],
               "client_ip_address": "203.0.113.77"}),
    geo={"203.0.113.77": {"city": "Seattle", "region": "WA", "country": "US"}},
)

# --- identifiers ------------------------------------------------------------

m = msg("track", "Signup", userId=12345, anonymousId="  anon-XYZ ")
case(
    "external_id_both",
    "external_id: [userId, anonymousId], trimmed, no case change; numeric userId as text",
    m,
    signup(m, {"external_id": [H("12345"), H("anon-XYZ")]}),
)

m = msg("page", anonymousId="anon-1", context={"clientIds": {"fbc": FBC, "fbp": FBP}})
case(
    "external_id_anonymous_and_click_ids",
    "only anonymousId; fbc/fbp from context.clientIds, unhashed and unchanged",
    m,
    mapped(
        "PageView",
        payload("PageView", m, {"external_id": [H("anon-1")], "fbc": FBC, "fbp": FBP}),
    ),
)

m = msg(
    "track",
    "Signup",
    properties={"fbc": "fb.1.1.props", "fbp": "fb.1.1.propsp", "plan": "x"},
    context={"clientIds": {"fbc": FBC, "fbp": FBP}, "ip": "2001:DB8::1", "userAgent": UA},
)
case(
    "click_ids_properties_win_ipv6",
    "properties.fbc/fbp win over context.clientIds and are removed from custom_data; IPv6 kept",
    m,
    mapped(
        "Signup",
        payload(
            "Signup",
            m,
            {
                "client_ip_address": "2001:db8::1",
                "client_user_agent": UA,
                "fbc": "fb.1.1.props",
                "fbp": "fb.1.1.propsp",
            },
            {"plan": "x", **NO_PRODUCTS},
        ),
    ),
)

m = msg("track", "Signup", properties={"plan": "free"})
case(
    "nothing_identifying",
    "an event with nothing identifying still has an (empty) user_data",
    m,
    mapped("Signup", payload("Signup", m, {}, {"plan": "free", **NO_PRODUCTS})),
)

# --- §3.4 custom_data ---------------------------------------------------------

ORDER_PROPS = {
    "order_id": "50314b8e9bcf000000000000",
    "total": 27.5,
    "currency": "usd",
    "email": "John_Smith@gmail.com",
    "first_name": "Mary",
    "last_name": "Smith",
    "shipping": {"zipcode": "10001", "city": "New York", "state": "NY"},
    "products": [
        {"sku": "45790-32", "name": "Monopoly", "price": 19, "quantity": 1, "category": "Games"},
        {"sku": "46493-32", "name": "Uno", "price": 3.25, "quantity": 2, "category": "Games"},
    ],
}
m = msg(
    "track",
    "Order Completed",
    userId="user-1",
    properties=ORDER_PROPS,
    context=web_context(
        clientIds={"fbp": FBP}, traits={"address": {"country": "US"}}, page={"url": URL}
    ),
)
case(
    "order_completed_full",
    "a typical Purchase: identity properties removed from custom_data, two products",
    m,
    mapped(
        "Purchase",
        payload(
            "Purchase",
            m,
            {
                "em": APPENDIX_A["john_smith@gmail.com"],
                "fn": APPENDIX_A["mary"],
                "ln": H("smith"),
                "ct": H("newyork"),
                "st": H("ny"),
                "zp": H("10001"),
                "country": APPENDIX_A["us"],
                "external_id": [H("user-1")],
                "client_ip_address": IP,
                "client_user_agent": UA,
                "fbp": FBP,
            },
            {
                "order_id": "50314b8e9bcf000000000000",
                "total": 27.5,
                "currency": "USD",
                "products": ORDER_PROPS["products"],
                "value": "27.5",
                "content_ids": ["45790-32", "46493-32"],
                "contents": [
                    {"id": "45790-32", "quantity": 1, "item_price": 19},
                    {"id": "46493-32", "quantity": 2, "item_price": 3.25},
                ],
                "content_type": "product_group",
                "content_name": "Monopoly",
                "content_category": "Games",
                "num_items": 2,
            },
            url=URL,
        ),
    ),
)

products = [{"product_id": "p-1", "price": "12.50"}, {"variant_id": 778, "quantity": "3"}, {"x": 1}]
m = msg("track", "Checkout Started", properties={"products": products})
case(
    "products_without_sku",
    "content id falls back sku > product_id > variant_id; numeric ids as text; string price "
    "as number; missing quantity is 1; a product with no id is counted but has no content",
    m,
    mapped(
        "InitiateCheckout",
        payload(
            "InitiateCheckout",
            m,
            {},
            {
                "products": products,
                **NO_PRODUCTS,
                "content_ids": ["p-1", "778"],
                "contents": [
                    {"id": "p-1", "quantity": 1, "item_price": 12.5},
                    {"id": "778", "quantity": 3},
                ],
                "content_type": "product_group",
                "num_items": 3,
            },
        ),
    ),
)

products = [{"sku": "S-1", "product_id": "P-1", "name": "Tee", "price": 20}]
m = msg(
    "track",
    "Product Added",
    properties={"products": products, "meta": {"i18n": {"currency": "gbp"}}},
)
case(
    "one_product_currency_from_i18n",
    "one product → content_type product; currency from properties.meta.i18n.currency",
    m,
    mapped(
        "AddToCart",
        payload(
            "AddToCart",
            m,
            {},
            {
                "products": products,
                "meta": {"i18n": {"currency": "gbp"}},
                "value": "0",
                "currency": "GBP",
                "content_ids": ["S-1"],
                "contents": [{"id": "S-1", "quantity": 1, "item_price": 20}],
                "content_type": "product",
                "content_name": "Tee",
                "num_items": 1,
            },
        ),
    ),
)

m = msg("track", "Product Added", properties={"products": products})
case(
    "content_id_field_product_id",
    "content_id_field product_id is preferred over sku",
    m,
    mapped(
        "AddToCart",
        payload(
            "AddToCart",
            m,
            {},
            {
                "products": products,
                **NO_PRODUCTS,
                "content_ids": ["P-1"],
                "contents": [{"id": "P-1", "quantity": 1, "item_price": 20}],
                "content_type": "product",
                "content_name": "Tee",
                "num_items": 1,
            },
        ),
    ),
    config={"content_id_field": "product_id"},
)

props = {"sku": "SKU-9", "name": "Boots", "price": 89.9, "quantity": 2, "category": "Shoes"}
m = msg("track", "Product Viewed", properties=props)
case(
    "top_level_sku_product",
    "no products array but properties.sku: one product from the top-level properties",
    m,
    mapped(
        "ViewContent",
        payload(
            "ViewContent",
            m,
            {},
            {
                **props,
                **NO_PRODUCTS,
                "content_ids": ["SKU-9"],
                "contents": [{"id": "SKU-9", "quantity": 2, "item_price": 89.9}],
                "content_type": "product",
                "content_name": "Boots",
                "content_category": "Shoes",
                "num_items": 1,
            },
        ),
    ),
)

m = msg(
    "track", "Order Completed", properties={"total": " 1299.00 ", "currency": "eur", "value": 5}
)
case(
    "total_string_currency_lower",
    "total as a string is sent trimmed; currency upper-cased; structured value wins over a "
    "same-named property",
    m,
    mapped(
        "Purchase",
        payload(
            "Purchase",
            m,
            {},
            {"total": " 1299.00 ", "currency": "EUR", "value": "1299.00"},
        ),
    ),
)

m = msg("track", "Order Completed", properties={"total": 0, "currency": "dollars"})
case(
    "total_zero_bad_currency_default",
    "total 0 is '0'; an unknown currency falls back to the configured default",
    m,
    mapped(
        "Purchase",
        payload("Purchase", m, {}, {"total": 0, "currency": "EUR", "value": "0"}),
    ),
    config={"default_currency": "eur"},
)

m = msg("track", "Order Completed", properties={"total": "about 5 bucks"})
case(
    "total_not_a_number",
    "a total that is not a number is treated as absent ('0')",
    m,
    mapped(
        "Purchase",
        payload("Purchase", m, {}, {"total": "about 5 bucks", "value": "0", "currency": "USD"}),
    ),
)

# --- §3.5 property mappings ---------------------------------------------------

MAPPINGS = {
    "properties.email": "properties.customer.email",
    "properties.total": "properties.revenue",
    "properties.products": "properties.line_items",
    "properties.products[].sku": "variant_sku",
    "properties.products[].price": "unit_price",
    "context.traits.name": "context.traits.full_name",
    "context.traits.address.country": "properties.ship_to.country_code",
}
line_items = [{"variant_sku": "V-1", "unit_price": 10, "quantity": 1, "sku": "ignored"}]
m = msg(
    "track",
    "Order Completed",
    properties={
        "customer": {"email": "Buyer@Example.com", "id": "c-9"},
        "revenue": 10,
        "line_items": line_items,
        "ship_to": {"country_code": "DE"},
        "email": "not-the-source@example.com",
    },
    context={"traits": {"full_name": "Anna Schmidt", "name": "Wrong Person"}},
)
case(
    "property_mappings",
    "mapped sources are read from the user's paths; mapped identity paths under properties "
    "(and the default ones) are removed from custom_data",
    m,
    mapped(
        "Purchase",
        payload(
            "Purchase",
            m,
            {
                "em": H("buyer@example.com"),
                "fn": H("anna"),
                "ln": H("schmidt"),
                "country": H("de"),
            },
            {
                "customer": {"id": "c-9"},
                "revenue": 10,
                "line_items": line_items,
                "value": "10",
                "currency": "USD",
                "content_ids": ["V-1"],
                "contents": [{"id": "V-1", "quantity": 1, "item_price": 10}],
                "content_type": "product",
                "num_items": 1,
            },
        ),
    ),
    config={"property_mappings": MAPPINGS},
)


def main() -> None:
    for old in HERE.glob("*.json"):
        old.unlink()
    slugs = [c["slug"] for c in CASES]
    assert len(slugs) == len(set(slugs)), "duplicate slug"
    for index, entry in enumerate(CASES, start=1):
        slug = entry.pop("slug")
        assert re.fullmatch(r"[a-z0-9_]+", slug), slug
        path = HERE / f"{index:02d}_{slug}.json"
        path.write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(CASES)} golden cases to {HERE}")


if __name__ == "__main__":
    main()
