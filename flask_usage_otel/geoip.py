"""Geolocation from a local MaxMind-format database (``TRACK_USAGE_GEOIP_DB``).

Flask-Track-Usage asked a third-party web service on every request, with no
timeout. Here the lookup is a read of a memory-mapped file on this machine: no
network, a few microseconds, cached per address. Needs the ``geoip`` extra
(``maxminddb``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class GeoIP:
    """Looks addresses up in a MaxMind DB file (GeoLite2/GeoIP2 City or Country, or alike)."""

    def __init__(self, path: str) -> None:
        try:
            import maxminddb
        except ImportError as exc:
            raise ImportError(
                "TRACK_USAGE_GEOIP_DB needs the maxminddb package: pip install 'flask-usage-otel[geoip]'"
            ) from exc
        self._reader = maxminddb.open_database(path)
        self.lookup = lru_cache(maxsize=8192)(self._lookup)

    def _lookup(self, address: str | None) -> dict[str, Any] | None:
        """A compact dict (country, city, continent, latitude, longitude), or None when unknown."""
        if not address:
            return None
        try:
            found = self._reader.get(address)
        except ValueError:  # not an IP address
            return None
        if not isinstance(found, dict):
            return None
        return _compact(found)

    def close(self) -> None:
        self._reader.close()


def _compact(found: dict[str, Any]) -> dict[str, Any] | None:
    """Keep the coarse, useful part of a GeoIP2-shaped record (never the whole blob)."""
    info: dict[str, Any] = {}
    country = found.get("country") or found.get("registered_country")
    if isinstance(country, dict) and country.get("iso_code"):
        info["country"] = country["iso_code"]
    continent = found.get("continent")
    if isinstance(continent, dict) and continent.get("code"):
        info["continent"] = continent["code"]
    city = found.get("city")
    if isinstance(city, dict) and isinstance(city.get("names"), dict) and city["names"].get("en"):
        info["city"] = city["names"]["en"]
    location = found.get("location")
    if isinstance(location, dict) and "latitude" in location and "longitude" in location:
        info["latitude"] = location["latitude"]
        info["longitude"] = location["longitude"]
    return info or None
