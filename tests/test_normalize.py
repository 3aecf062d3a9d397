"""Normalisation rules of SPEC §3.3, one behaviour per test."""

from __future__ import annotations

import hashlib

import pytest

from sidecar import normalize

# Appendix A of the Meta reference: (normaliser, raw input, published SHA-256).
APPENDIX_A = [
    (
        normalize.email,
        "John_Smith@gmail.com",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    (
        normalize.phone,
        "+1 (650)555-1212",  # Meta's example with the country code it requires
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    ),
    (normalize.name, "Mary", "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    (normalize.name, "정", "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    (normalize.name, "Valéry", "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    (normalize.country, "US", "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
]


@pytest.mark.parametrize(("normaliser", "raw", "digest"), APPENDIX_A)
def test_appendix_a_vectors(normaliser: normalize.Normaliser, raw: str, digest: str) -> None:
    assert normalize.hashed(raw, normaliser) == digest


def test_phone_vector_with_region_completes_country_code() -> None:
    digest = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert normalize.hashed("(650) 555-1212", normalize.phone_for("US")) == digest


def test_sha256_hex_is_lowercase_hex_of_utf8() -> None:
    assert normalize.sha256_hex("é") == hashlib.sha256("é".encode()).hexdigest()


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_blank_values_hash_to_nothing(raw: str) -> None:
    assert normalize.hashed(raw, normalize.email) is None


@pytest.mark.parametrize("raw", ["!!!", "...", " - "])
def test_values_with_nothing_left_after_normalising_hash_to_nothing(raw: str) -> None:
    assert normalize.hashed(raw, normalize.name) is None


def test_prehashed_value_passes_through_lowercased() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert normalize.hashed(f"  {digest.upper()} ", normalize.name) == digest


def test_md5_looking_value_is_hashed_not_passed_through() -> None:
    md5 = hashlib.md5(b"x").hexdigest()  # a fixture, not security
    assert normalize.hashed(md5, normalize.external_id) == normalize.sha256_hex(md5)


def test_63_hex_characters_are_hashed() -> None:
    value = "a" * 63
    assert normalize.hashed(value, normalize.external_id) == normalize.sha256_hex(value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  John_Smith@Gmail.COM ", "john_smith@gmail.com"),
        ("ÉLISE@exemple.fr", "élise@exemple.fr"),
        ("not-an-email", "not-an-email"),
    ],
)
def test_email_is_trimmed_and_lowercased(raw: str, expected: str) -> None:
    assert normalize.email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (650) 555-1212", None, "16505551212"),
        ("(650) 555-1212", None, "6505551212"),
        ("(650) 555-1212", "US", "16505551212"),
        ("650.555.1212", "US", "16505551212"),
        ("1-650-555-1212", "US", "16505551212"),
        ("0044 7911 123456", None, "447911123456"),
        ("0044 7911 123456", "US", "447911123456"),
        ("+44 7911 123456", "US", "447911123456"),
        ("07911 123456", "GB", "447911123456"),
        ("07911 123456", None, "7911123456"),
        ("020 7946 0958", "GB", "442079460958"),
        ("+44 (0)20 7946 0958", None, "442079460958"),
        ("+41 (0) 44 668 18 00", "DE", "41446681800"),
        ("087 123 4567", "IE", "353871234567"),
        ("06 12 34 56 78", "FR", "33612345678"),
        ("447911123456", "US", "447911123456"),
        ("000123", None, "123"),
        ("\uff11\uff12\uff13\uff14\uff15\uff16\uff17", None, "1234567"),  # full-width
        ("n/a", "US", None),
        ("0000", None, None),
        ("ext", None, None),
    ],
)
def test_phone(raw: str, region: str | None, expected: str | None) -> None:
    assert normalize.phone(raw, region) == expected


def test_phone_for_without_region_is_the_plain_rule() -> None:
    assert normalize.phone_for(None) is normalize.phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Mary", "mary"),
        ("Mary Ann", "maryann"),
        ("O'Brien-Smith", "obriensmith"),
        ("J.-P.", "jp"),
        ("Valéry", "valéry"),
        ("Vale\u0301ry", "valéry"),
        ("ZOË", "zoë"),
        ("정", "정"),
        ("Владимир", "владимир"),
        ("محمد", "محمد"),
        ("Nguyễn", "nguyễn"),
        ("Anne\u2010Marie", "annemarie"),  # U+2010 hyphen
        ("Chloé ♥", "chloé"),
        ("Louis XIV", "louisxiv"),
        ("Henry 8th", "henry8th"),
    ],
)
def test_name(raw: str, expected: str) -> None:
    assert normalize.name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("New York", "newyork"),
        ("St. Louis", "stlouis"),
        ("Winston-Salem", "winstonsalem"),
        ("São Paulo", "sãopaulo"),
        ("Москва", "москва"),
        ("London 2", "london"),
        ("O'Fallon", "ofallon"),
        ("12345", None),
    ],
)
def test_city(raw: str, expected: str | None) -> None:
    assert normalize.city(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("California", "ca"),
        ("CALIFORNIA", "ca"),
        ("new york", "ny"),
        ("New-York", "ny"),
        ("District of Columbia", "dc"),
        ("Washington DC", "dc"),
        ("Puerto Rico", "pr"),
        ("CA", "ca"),
        ("US-TX", "tx"),
        ("Ontario", "ontario"),
        ("ENG", "eng"),
        ("Île-de-France", "îledefrance"),
        ("13", "13"),
        ("B.C.", "bc"),
    ],
)
def test_state(raw: str, expected: str) -> None:
    assert normalize.state(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("94107", "94107"),
        ("02134", "02134"),
        ("94107-1234", "94107"),
        ("94107 - 1234", "94107"),
        ("941071234", "94107"),
        ("SW1A 1AA", "sw1a1aa"),
        ("m1 1ae", "m11ae"),
        ("D02 X285", "d02x285"),
        ("100-0001", "1000001"),
        ("01310-100", "01310100"),
        ("K1A 0B1", "k1a0b1"),
        ("-", None),
    ],
)
def test_zip_code(raw: str, expected: str | None) -> None:
    assert normalize.zip_code(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("US", "us"),
        ("us", "us"),
        ("U.S.", "us"),
        ("USA", "us"),
        ("United States", "us"),
        ("United States of America", "us"),
        ("GB", "gb"),
        ("UK", "gb"),
        ("United Kingdom", "gb"),
        ("Great Britain", "gb"),
        ("Ireland", "ie"),
        ("IRL", "ie"),
        ("Germany", "de"),
        ("Côte d'Ivoire", "ci"),
        ("Cote d'Ivoire", "ci"),
        ("South Korea", "kr"),
        ("Russia", "ru"),
        ("Türkiye", "tr"),
        ("Turkey", "tr"),
        ("XX", None),
        ("Atlantis", None),
        ("Deutschland", None),
    ],
)
def test_country(raw: str, expected: str | None) -> None:
    assert normalize.country(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("usd", "USD"),
        (" Eur ", "EUR"),
        ("GBP", "GBP"),
        ("dollars", None),
        ("XYZ", None),
        ("", None),
    ],
)
def test_currency(raw: str, expected: str | None) -> None:
    assert normalize.currency(raw) == expected


def test_external_id_keeps_case() -> None:
    assert normalize.hashed(" User-ABC ", normalize.external_id) == normalize.sha256_hex("User-ABC")
