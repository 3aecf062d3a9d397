"""Normalisation and hashing of customer information (SPEC §3.3).

Owns the rules that turn one raw identity value (an e-mail address, a phone
number, a name, a piece of an address) into the exact string Meta hashes, and
the hashing itself. Every function is pure: no clock, no environment, no I/O.

Conventions shared by all normalisers:

* input is a non-empty string that has already been trimmed by the caller
  (:func:`hashed` does that); the result is the normalised string, or
  ``None`` when nothing usable is left (``"!!!"`` as a name, say), so that an
  unusable value produces an absent field rather than the hash of ``""``;
* a value that already is 64 hexadecimal characters is taken to be a SHA-256
  digest made upstream and passed through lower-cased, unhashed
  (:func:`hashed` checks this before normalising);
* only the closed sets (countries, US states, currencies) are cached; personal
  values are not kept in memory beyond the call.

The differences from Meta's Python SDK normaliser are listed, with reasons,
in ``docs/mapping.md``.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Callable
from functools import cache, lru_cache

import phonenumbers
import pycountry

Normaliser = Callable[[str], str | None]

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_NOT_ASCII_DIGIT = re.compile(r"[^0-9]+")
_ZIP_PLUS_4 = re.compile(r"(\d{5})-?\d{4}")
_US_STATE_CODE = re.compile(r"us-([a-z]{2})")
# "+44 (0)20 7946 0958": the bracketed trunk prefix is not dialled from abroad.
_BRACKETED_TRUNK = re.compile(r"^(\+\s*\d{1,4})[\s.-]*\(\s*0\s*\)")

# Deletions for the all-ASCII fast path (a regex substitution is faster than
# ``str.translate`` with a deletion table); the general path below works on
# Unicode categories instead.
_DROP_NAME_CHARS = string.punctuation + string.whitespace
_DROP_NAME = re.compile(f"[{re.escape(_DROP_NAME_CHARS)}]+")
_DROP_CITY = re.compile(f"[{re.escape(_DROP_NAME_CHARS + string.digits)}]+")
_DROP_ZIP = _DROP_NAME
_ASCII_LETTERS = frozenset(string.ascii_lowercase)

# Common English names and abbreviations that ISO 3166 (and pycountry) does
# not list, keyed like :func:`_name_key`.
_COUNTRY_ALIASES = {
    "uk": "gb",
    "greatbritain": "gb",
    "britain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "america": "us",
    "unitedstatesofamerica": "us",
    "russia": "ru",
    "turkey": "tr",
    "holland": "nl",
    "thenetherlands": "nl",
    "macedonia": "mk",
    "swaziland": "sz",
    "burma": "mm",
    "palestine": "ps",
    "vatican": "va",
    "vaticancity": "va",
    "brunei": "bn",
    "capeverde": "cv",
    "ivorycoast": "ci",
    "southkorea": "kr",
    "northkorea": "kp",
    "czechrepublic": "cz",
}
_STATE_ALIASES = {"washingtondc": "dc", "dc": "dc"}


def sha256_hex(value: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes of ``value``."""
    return hashlib.sha256(value.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` looks like a SHA-256 digest (64 hex characters)."""
    return _HEX64.fullmatch(value) is not None


def hashed(raw: str, normalise: Normaliser) -> str | None:
    """Normalise ``raw`` with ``normalise`` and hash it.

    A value that is 64 hex characters after trimming is returned lower-cased
    as it is; a value with nothing left after normalising gives ``None``.
    """
    value = raw.strip()
    if not value:
        return None
    if len(value) == 64 and _HEX64.fullmatch(value):
        return value.lower()
    normalised = normalise(value)
    return sha256_hex(normalised) if normalised else None


def _unicode_keep(value: str, keep: str) -> str:
    """NFC-normalise ``value`` and keep the characters whose Unicode major
    category is in ``keep`` (``L`` letters, ``M`` marks, ``N`` numbers)."""
    value = unicodedata.normalize("NFC", value)
    return "".join(ch for ch in value if unicodedata.category(ch)[0] in keep)


def email(value: str) -> str | None:
    """em: trimmed and lower-cased (NFC for non-ASCII addresses)."""
    value = value.strip().lower()
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    return value or None


def name(value: str) -> str | None:
    """fn/ln: lower-case; punctuation, symbols and spaces removed.

    Letters of every script (and their combining marks) are kept, in NFC,
    so ``Valéry`` gives ``valéry`` and ``정`` stays ``정``.
    """
    value = value.lower()
    if value.isascii():
        if value.isalnum():  # nothing to remove: the common case
            return value
        return _DROP_NAME.sub("", value) or None
    return _unicode_keep(value, "LMN") or None


def city(value: str) -> str | None:
    """ct: lower-case; spaces, digits, punctuation and symbols removed."""
    value = value.lower()
    if value.isascii():
        if value.isalpha():  # nothing to remove
            return value
        joined = value.replace(" ", "")
        if joined.isalpha():  # "san francisco": only spaces to remove
            return joined
        return _DROP_CITY.sub("", value) or None
    return _unicode_keep(value, "LM") or None


def zip_code(value: str) -> str | None:
    """zp: lower-case, no spaces; a US ZIP+4 keeps its first five digits;
    otherwise dashes (and any other punctuation) are removed."""
    value = "".join(value.lower().split())
    plus4 = _ZIP_PLUS_4.fullmatch(value)
    if plus4:
        return plus4.group(1)
    if value.isascii():
        if value.isalnum():  # nothing to remove
            return value
        return _DROP_ZIP.sub("", value) or None
    return _unicode_keep(value, "LN") or None


@lru_cache(maxsize=2048)
def state(value: str) -> str | None:
    """st: lower-case; a US state name (or ``US-CA``) becomes its two-letter
    code; punctuation, symbols and spaces removed (digits kept: some
    subdivision codes are numeric)."""
    value = value.strip().lower()
    iso = _US_STATE_CODE.fullmatch(value)
    if iso and iso.group(1) in _us_state_codes():
        return iso.group(1)
    key = _DROP_NAME.sub("", value) if value.isascii() else _unicode_keep(value, "LMN")
    return _us_states().get(_name_key(key), key) or None


@lru_cache(maxsize=2048)
def country(value: str) -> str | None:
    """country: lower-case ISO 3166-1 alpha-2; names, alpha-3 codes and a few
    common aliases (``UK``, ``Holland``) become codes; unknown values give
    ``None`` (a hash Meta can never match is not worth sending)."""
    value = value.strip()
    key = _name_key(value)
    if len(key) == 2:
        key = _COUNTRY_ALIASES.get(key, key)
        return key if pycountry.countries.get(alpha_2=key) is not None else None
    if len(key) == 3:
        found = pycountry.countries.get(alpha_3=key)
        if found is not None:
            return str(found.alpha_2).lower()
    return _COUNTRY_ALIASES.get(key) or _country_names().get(key)


@lru_cache(maxsize=256)
def currency(value: str) -> str | None:
    """An upper-case ISO 4217 code, or ``None`` when ``value`` is not one."""
    code = value.strip().upper()
    if len(code) != 3 or pycountry.currencies.get(alpha_3=code) is None:
        return None
    return code


def external_id(value: str) -> str | None:
    """external_id: hashed as given (trimmed by :func:`hashed`), no case change."""
    return value or None


def phone_for(region: str | None) -> Normaliser:
    """The ph normaliser for a configured default region (``None``: Meta's
    plain rule only)."""
    if region is None:
        return phone
    return lambda value: phone(value, region)


def phone(value: str, region: str | None = None) -> str | None:
    """ph: digits only, leading zeros stripped (Meta's rule).

    With ``region`` set, a number written without an international prefix
    (no ``+``, no ``00``) that is a valid number of that region is completed
    with the region's calling code and loses its trunk prefix, so
    ``(650) 555-1212`` in ``US`` gives ``16505551212`` and ``020 7946 0958``
    in ``GB`` gives ``442079460958``. A number that is not valid in the
    region but is valid with ``+`` in front is taken to already carry its
    country code. A bracketed trunk prefix after the country code, as in
    ``+44 (0)20 7946 0958``, is dropped.
    """
    if "(" in value:
        value = _BRACKETED_TRUNK.sub(r"\1", value, count=1)
    digits = _digits(value)
    if not digits:
        return None
    stripped = digits.lstrip("0") or None
    international = value.lstrip().startswith("+") or digits.startswith("00")
    if region is None or international:
        return stripped
    return _complete_national(value, digits, region) or stripped


def _digits(value: str) -> str:
    if value.isascii():
        return _NOT_ASCII_DIGIT.sub("", value)
    # Full-width and other-script decimal digits count as digits.
    return "".join(str(unicodedata.decimal(ch)) for ch in value if ch.isdecimal())


def _complete_national(value: str, digits: str, region: str) -> str | None:
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_valid_number(parsed):
        return _e164_digits(parsed)
    try:
        as_international = phonenumbers.parse("+" + digits.lstrip("0"), None)
    except phonenumbers.NumberParseException:
        as_international = None
    if as_international is not None and phonenumbers.is_valid_number(as_international):
        return None  # already has a country code: Meta's rule applies
    if phonenumbers.is_possible_number(parsed):
        return _e164_digits(parsed)
    return None


def _e164_digits(number: phonenumbers.PhoneNumber) -> str:
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted.lstrip("+")


def _name_key(value: str) -> str:
    """ASCII lower-case letters only, accents folded: the key under which
    country and state names are compared."""
    if not value.isascii():
        decomposed = unicodedata.normalize("NFKD", value)
        value = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(ch for ch in value.lower() if ch in _ASCII_LETTERS)


@cache
def _country_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for entry in pycountry.countries:
        code = str(entry.alpha_2).lower()
        for attr in ("name", "official_name", "common_name"):
            label = getattr(entry, attr, None)
            if label:
                names.setdefault(_name_key(str(label)), code)
    return names


@cache
def _us_states() -> dict[str, str]:
    states = dict(_STATE_ALIASES)
    for entry in pycountry.subdivisions:
        if entry.country_code != "US":
            continue
        states[_name_key(str(entry.name))] = str(entry.code).split("-")[1].lower()
    return states


@cache
def _us_state_codes() -> frozenset[str]:
    return frozenset(_us_states().values())
