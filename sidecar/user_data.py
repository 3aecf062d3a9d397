"""User data: the ``user_data`` object of a Meta server event (SPEC §3.2-3.3).

Owns which canonical sources feed each customer-information parameter and in
what order, hashing them through :mod:`sidecar.normalize` (values that already
are SHA-256 hex pass through), splitting ``context.traits.name`` into first
and last name, ``external_id`` from the user and anonymous ids, the client IP
address, and filling ``ct``/``st``/``country`` from :mod:`sidecar.geo` where
the event has none. Pure like the rest of the mapping stage: the message is
only read, and the geo lookup is the one outside source.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from sidecar import normalize
from sidecar.paths import Getter, Sources, first_text, text

if TYPE_CHECKING:
    from sidecar.config import DestinationSettings
    from sidecar.geo import GeoLookup

_Alt = tuple[Getter, int | None]  # a source, and which word of it (None: all)
_HashSpec = tuple[str, tuple[_Alt, ...], normalize.Normaliser]

# Dotted-quad IPv4 without leading zeros: checked by regex because
# ``ipaddress`` costs several microseconds per call on the hot path.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


class UserDataBuilder:
    """Builds ``user_data`` for one destination; configured once per Mapper."""

    def __init__(
        self, paths: dict[str, Sources], dest: DestinationSettings, geo: GeoLookup | None
    ) -> None:
        self._geo = geo
        self._hashed = _hash_specs(paths, dest.phone_field, dest.phone_default_region)
        self._external_ids = paths["userId"] + paths["anonymousId"]
        self._ip = paths["context.ip"]
        self._plain = (
            ("client_user_agent", paths["context.userAgent"]),
            ("fbc", paths["properties.fbc"] + paths["context.clientIds.fbc"]),
            ("fbp", paths["properties.fbp"] + paths["context.clientIds.fbp"]),
        )

    def build(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The ``user_data`` of ``message``; parameters without a value are left out."""
        data = self._hashed_fields(message)
        ip = _ip(first_text(message, self._ip))
        if self._geo is not None and ip is not None:
            _add_geo(data, self._geo, ip)
        external = self._external_id(message)
        if external:
            data["external_id"] = external
        if ip is not None:
            data["client_ip_address"] = ip
        for key, sources in self._plain:
            found = first_text(message, sources)
            if found is not None:
                data[key] = found
        return data

    def _hashed_fields(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """em, ph, fn, ln, ct, st, zp and country: of each, the first source
        with a usable value, normalised and hashed."""
        data: dict[str, Any] = {}
        for key, alts, normaliser in self._hashed:
            # normalize.hashed() inlined, and no call per field: this loop
            # is the bulk of the work of mapping an event.
            for get, word in alts:
                raw = get(message)
                if raw is None:  # absent: the usual miss
                    continue
                found = raw.strip() if type(raw) is str else text(raw)
                if found and word is not None:
                    found = _word(found, word)
                if not found:
                    continue
                if len(found) == 64 and normalize.is_sha256_hex(found):
                    data[key] = found.lower()
                    break
                normalised = normaliser(found)
                if normalised:
                    data[key] = sha256(normalised.encode()).hexdigest()
                    break
        return data

    def _external_id(self, message: Mapping[str, Any]) -> list[str]:
        ids: list[str] = []
        for get in self._external_ids:
            raw = get(message)
            if raw is None:
                continue
            found = raw.strip() if type(raw) is str else text(raw)
            if not found:
                continue
            # normalize.hashed(found, normalize.external_id), inlined: the
            # id is hashed as given, or passed through if it already is a hash.
            if len(found) == 64 and normalize.is_sha256_hex(found):
                value = found.lower()
            else:
                value = sha256(found.encode()).hexdigest()
            if value not in ids:
                ids.append(value)
        return ids


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


def _hash_specs(
    paths: dict[str, Sources], phone_field: str | None, region: str | None
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


# --- hot path ----------------------------------------------------------------


def _word(value: str, index: int) -> str | None:
    """The first (``0``) or second (``1``) word, as the SPEC's name split says."""
    words = value.split()
    return words[index] if len(words) > index else None


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    if _IPV4.fullmatch(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
