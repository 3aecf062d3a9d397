"""IP geolocation for user_data enrichment (SPEC §3.6).

Owns the one file the mapping stage may read: a MaxMind-format City database
(GeoLite2 City, GeoIP2 City, or any database with the same record layout),
opened once at start-up with the ``geoip2`` library. The mapper only sees the
:class:`GeoLookup` protocol, so tests and other sources can stand in for it.

A lookup answers the city name (English), the first-level subdivision's ISO
code (the state, for the US) and the country's ISO code; the mapper
normalises and hashes them and uses each only where the event has no value
of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import geoip2.database
import geoip2.errors
import maxminddb

from sidecar.errors import ConfigError

# Lookups are cached per address: a visitor sends many events from one IP,
# and a miss costs a tree walk in the database file.
_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class GeoResult:
    """What the database knows about one address; any part may be missing."""

    city: str | None
    region: str | None
    country: str | None


class GeoLookup(Protocol):
    """Something that can place an IP address."""

    def lookup(self, ip: str) -> GeoResult | None:
        """The location of ``ip``, or ``None`` when it is unknown or invalid."""
        ...


class MaxMindGeo:
    """A :class:`GeoLookup` over an open ``geoip2`` City reader."""

    def __init__(self, reader: geoip2.database.Reader) -> None:
        self._reader = reader
        self.lookup = lru_cache(maxsize=_CACHE_SIZE)(self._lookup)

    def _lookup(self, ip: str) -> GeoResult | None:
        try:
            found = self._reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None
        region = found.subdivisions[0].iso_code if found.subdivisions else None
        result = GeoResult(city=found.city.name, region=region, country=found.country.iso_code)
        if result.city is None and result.region is None and result.country is None:
            return None
        return result

    def close(self) -> None:
        """Release the database file."""
        self._reader.close()


def open_geo(path: Path) -> MaxMindGeo:
    """Open the City database at ``path``.

    Raises :class:`ConfigError` with one line when the file is missing,
    unreadable, not a MaxMind database, or not a City database.
    """
    try:
        reader = geoip2.database.Reader(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
        raise ConfigError([f"geoip_db: cannot open {path}: {_reason(err)}"]) from err
    kind = str(reader.metadata().database_type)
    if "city" not in kind.lower():
        reader.close()
        raise ConfigError([f"geoip_db: {path} is a {kind!r} database; a City database is needed"])
    return MaxMindGeo(reader)


def _reason(err: Any) -> str:
    return str(getattr(err, "strerror", None) or err)
