"""Client addresses made less personal before anything stores or exports them.

``TRACK_USAGE_ANONYMIZE_IP = "truncate"`` keeps the network and drops the host:
IPv4 to its /24 (``192.0.2.0``), IPv6 to its /48 (``2001:db8:1::``), the same
cut the major analytics tools make. ``"hash"`` replaces each address with a
keyed hash (HMAC-SHA256 with ``TRACK_USAGE_ANONYMIZE_IP_KEY``), so one client's
rows can still be grouped without the address being recoverable by anyone
without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache

_UNKNOWN = "unknown"
_MAX_CHAIN_ENTRIES = 32  # a forwarded chain longer than this is cut: nobody has 32 proxies


_MAX_CACHED_ADDRESS = 64
"""Longest value cached: an IPv6 address with a zone fits; a hostile 8 KB "address" is computed, not kept."""


class Anonymizer:
    """Anonymizes single addresses and ``X-Forwarded-For`` chains; results are cached."""

    def __init__(self, mode: str, key: bytes | None = None) -> None:
        if mode not in {"truncate", "hash"}:
            raise ValueError(f"unknown anonymization mode {mode!r}")
        if mode == "hash" and not key:
            raise ValueError("hash mode needs a key")
        self.mode = mode
        self._key = key or b""
        # Addresses repeat (the same clients, the same proxies): parse each once.
        self._cached = lru_cache(maxsize=8192)(self._address)

    def address(self, address: str | None) -> str | None:
        """Anonymize one address (cached; a value too long to be an address is not kept in the cache)."""
        if address is not None and len(address) > _MAX_CACHED_ADDRESS:
            return self._address(address)
        return self._cached(address)

    def chain(self, value: str | None) -> str | None:
        """Anonymize every address of an ``X-Forwarded-For`` value, keeping its order."""
        if value is None:
            return None
        parts = value.split(",", _MAX_CHAIN_ENTRIES)[:_MAX_CHAIN_ENTRIES]
        return ", ".join(self.address(part.strip()) or _UNKNOWN for part in parts)

    def _address(self, address: str | None) -> str | None:
        if not address:
            return address
        if self.mode == "hash":
            digest = hmac.new(self._key, address.encode("utf-8", "surrogateescape"), hashlib.sha256)
            return "h:" + digest.hexdigest()[:32]
        return truncate_address(address)


def truncate_address(address: str) -> str:
    """IPv4 to its /24, IPv6 to its /48; anything that is not an address becomes ``unknown``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return _UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
