"""Differential tests against Meta's own normaliser.

``facebook_business.adobjects.serverside.normalize.Normalize`` is the Python
Business SDK's implementation of the same rules. For inputs where both are
meant to agree, the hashes must be identical; every input class where they
differ on purpose is pinned by a test below and listed, with its reason, in
docs/mapping.md ("Differences from Meta's SDK normaliser").
"""

from __future__ import annotations

import re
import string
import unicodedata

import pycountry
import pytest
from facebook_business.adobjects.serverside.normalize import Normalize
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sidecar import normalize

HEX32 = re.compile(r"[0-9a-f]{32}")
EMPTY_HASH = normalize.sha256_hex("")
NORMALISERS: dict[str, normalize.Normaliser] = {
    "em": normalize.email,
    "ph": normalize.phone,
    "fn": normalize.name,
    "ln": normalize.name,
    "ct": normalize.city,
    "zp": normalize.zip_code,
    "country": normalize.country,
}

padding = st.text(alphabet=" \t", max_size=2)
ascii_letters = st.sampled_from(string.ascii_letters)
accented = st.sampled_from("éèêëàâäôöûüçñßøåæœíóúãõ")


def sdk(field: str, value: str) -> str | None:
    result: str | None = Normalize.normalize_field(field, value)
    return result


def random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch for ch, flip in zip(text, flips, strict=True))


@st.composite
def emails(draw: st.DrawFn) -> str:
    local_chars = string.ascii_lowercase + string.digits + "._+-"
    local = draw(st.text(alphabet=local_chars, min_size=1, max_size=20))
    domain = draw(st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1))
    tld = draw(st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=6))
    address = random_case(draw, f"{local}@{domain}.{tld}")
    return draw(padding) + address + draw(padding)


@st.composite
def phones(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["", "+", "00", "+00", "0"]))
    body = draw(st.text(alphabet="0123456789 -()", min_size=7, max_size=20))
    return draw(padding) + prefix + body + draw(padding)


@st.composite
def cities(draw: st.DrawFn) -> str:
    chars = st.one_of(ascii_letters, accented, st.sampled_from("0123456789 .-()"))
    return "".join(draw(st.lists(chars, min_size=1, max_size=25)))


@st.composite
def postcodes(draw: st.DrawFn) -> str:
    chars = st.sampled_from(string.ascii_letters + string.digits + " ")
    return "".join(draw(st.lists(chars, min_size=1, max_size=10)))


@st.composite
def country_codes(draw: st.DrawFn) -> str:
    code = draw(st.sampled_from(sorted(c.alpha_2 for c in pycountry.countries)))
    return draw(padding) + random_case(draw, code) + draw(padding)


@settings(deadline=None)
@given(emails())
def test_email_agrees_with_sdk(raw: str) -> None:
    assert normalize.hashed(raw, normalize.email) == sdk("em", raw)


@settings(deadline=None)
@given(st.text(min_size=1))
def test_email_agrees_with_sdk_on_anything_it_accepts(raw: str) -> None:
    assume(unicodedata.is_normalized("NFC", raw))  # we compose to NFC, the SDK does not
    assume(not HEX32.fullmatch(raw.lower().strip()))  # the SDK passes MD5-looking values
    try:
        expected = sdk("em", raw)
    except TypeError:  # not an address to the SDK; we hash what we are given
        return
    assert normalize.hashed(raw, normalize.email) == expected


@settings(deadline=None)
@given(phones())
def test_phone_agrees_with_sdk_whenever_the_sdk_accepts(raw: str) -> None:
    assume(not HEX32.fullmatch(raw.strip()))
    try:
        expected = sdk("ph", raw)
    except ValueError:  # too short or malformed for the SDK
        return
    assert normalize.hashed(raw, normalize.phone) == expected


@settings(deadline=None)
@given(cities())
def test_city_agrees_with_sdk(raw: str) -> None:
    expected = sdk("ct", raw)
    ours = normalize.hashed(raw, normalize.city)
    if expected == EMPTY_HASH:  # the SDK hashes "" when nothing is left; we send nothing
        assert ours is None
    else:
        assert ours == expected


@settings(deadline=None)
@given(postcodes())
def test_postcode_agrees_with_sdk(raw: str) -> None:
    assume(not re.fullmatch(r"\d{9}", "".join(raw.split())))  # we read that as ZIP+4
    expected = sdk("zp", raw)
    ours = normalize.hashed(raw, normalize.zip_code)
    assert ours == (None if expected == EMPTY_HASH else expected)


@settings(deadline=None)
@given(st.from_regex(r"\d{5}-\d{4}", fullmatch=True))
def test_zip_plus_4_agrees_with_sdk(raw: str) -> None:
    assert normalize.hashed(raw, normalize.zip_code) == sdk("zp", raw)


@settings(deadline=None)
@given(country_codes())
def test_country_code_agrees_with_sdk(raw: str) -> None:
    assert normalize.hashed(raw, normalize.country) == sdk("country", raw)


@settings(deadline=None)
@given(st.lists(st.one_of(ascii_letters, accented), min_size=1, max_size=15).map("".join))
def test_single_word_name_agrees_with_sdk(raw: str) -> None:
    assert normalize.hashed(raw, normalize.name) == sdk("fn", raw)


# --- the intentional differences, pinned ------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "ours", "sdk_result"),
    [
        # Names: we remove punctuation and spaces (Meta's documented rule and its
        # newer parameter-builder normaliser); the Python SDK only lower-cases.
        ("fn", "Mary Ann", "maryann", "mary ann"),
        ("ln", "O'Brien", "obrien", "o'brien"),
        # City: all punctuation and symbols go, not only . - ( ).
        ("ct", "O'Fallon", "ofallon", "o'fallon"),
        ("ct", "Zürich!", "zürich", "zürich!"),
        # Postcode: a dash that is not ZIP+4 is removed, not cut at.
        ("zp", "100-0001", "1000001", "100"),
        ("zp", "941071234", "94107", "941071234"),
        # Phone: "+44 (0)20" keeps the number dialable.
        ("ph", "+44 (0)20 7946 0958", "442079460958", "4402079460958"),
        # MD5-looking values are hashed: they may be real identifiers.
        ("em", "0123456789abcdef0123456789abcdef", None, "0123456789abcdef0123456789abcdef"),
    ],
)
def test_documented_difference(field: str, raw: str, ours: str | None, sdk_result: str) -> None:
    normaliser = NORMALISERS[field]
    expected_ours = normalize.sha256_hex(ours if ours is not None else raw)
    assert normalize.hashed(raw, normaliser) == expected_ours
    sdk_expected = sdk_result if HEX32.fullmatch(sdk_result) else normalize.sha256_hex(sdk_result)
    assert sdk(field, raw) == sdk_expected


@pytest.mark.parametrize(
    ("field", "raw", "ours"),
    [
        ("country", "United States", "us"),  # SDK: TypeError (names not accepted)
        ("country", "UK", "gb"),  # SDK: TypeError (not an ISO code)
        ("ph", "12345", "12345"),  # SDK: ValueError (fewer than 7 digits)
        ("ph", "+1 650 CALL NOW", "1650"),  # SDK: ValueError (letters)
        ("em", "not-an-email", "not-an-email"),  # SDK: TypeError
    ],
)
def test_sdk_rejects_what_we_accept(field: str, raw: str, ours: str) -> None:
    normaliser = NORMALISERS[field]
    assert normalize.hashed(raw, normaliser) == normalize.sha256_hex(ours)
    with pytest.raises((TypeError, ValueError)):
        sdk(field, raw)


def test_state_name_becomes_code_where_sdk_hashes_the_name() -> None:
    assert normalize.hashed("California", normalize.state) == normalize.sha256_hex("ca")
    assert sdk("st", "California") == normalize.sha256_hex("california")


def test_numeric_state_code_is_kept_where_sdk_hashes_empty_string() -> None:
    assert normalize.hashed("13", normalize.state) == normalize.sha256_hex("13")
    assert sdk("st", "13") == EMPTY_HASH


def test_decomposed_accents_are_composed_where_sdk_hashes_them_as_given() -> None:
    decomposed = "Vale\u0301ry"
    assert normalize.hashed(decomposed, normalize.name) == normalize.sha256_hex("val\u00e9ry")
    assert sdk("fn", decomposed) == normalize.sha256_hex("vale\u0301ry")


def test_external_id_is_hashed_where_sdk_sends_it_as_given() -> None:
    assert normalize.hashed("User-1", normalize.external_id) == normalize.sha256_hex("User-1")


def test_nothing_left_gives_no_field_where_sdk_hashes_empty_string() -> None:
    assert normalize.hashed("123", normalize.city) is None
    assert sdk("ct", "123") == EMPTY_HASH
