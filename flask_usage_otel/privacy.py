"""Personal data made less personal before anything stores or exports it.

Client addresses:
``TRACK_USAGE_ANONYMIZE_IP = "truncate"`` keeps the network and drops the host:
IPv4 to its /24 (``192.0.2.0``), IPv6 to its /48 (``2001:db8:1::``), the same
cut the major analytics tools make. ``"hash"`` replaces each address with a
keyed hash (HMAC-SHA256 with ``TRACK_USAGE_ANONYMIZE_IP_KEY``), so one client's
rows can still be grouped without the address being recoverable by anyone
without the key; both apply to the client (``client_ip``), whatever its spelling.

Query strings: ``QueryRedactor`` replaces the values of secret parameters
(``token``, ``password``, pre-signed URL signatures...) with ``REDACTED`` in rows,
span attributes and anything derived from them.

Exports: ``spreadsheet_safe`` neutralises cells a spreadsheet would run as formulas.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

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
            # The client, not its spelling: one hash for 2001:DB8::1 and 2001:db8::1, for
            # ::ffff:192.0.2.1 and 192.0.2.1, and for an X-Forwarded-For entry with a port.
            ip = client_ip(address)
            text = address if ip is None else str(ip)
            digest = hmac.new(self._key, text.encode("utf-8", "surrogateescape"), hashlib.sha256)
            return "h:" + digest.hexdigest()[:32]
        return truncate_address(address)


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address in any spelling a server or proxy gives: ``2001:DB8::1``,
    ``[2001:db8::1]:443``, ``198.51.100.23:51234`` (some gateways' ``X-Forwarded-For``),
    ``fe80::1%eth0``, ``::ffff:192.0.2.1`` (its IPv4 address); None when it is not an address."""
    text = address.strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4:port (an IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def truncate_address(address: str) -> str:
    """IPv4 to its /24, IPv6 to its /48; anything that is not an address becomes ``unknown``."""
    ip = client_ip(address)
    if ip is None:
        return _UNKNOWN
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


# -- erasure ---------------------------------------------------------------------------


class ErasureRefused(ValueError):
    """An erasure request that cannot single out one person's rows, so nothing was deleted."""


# -- query strings ---------------------------------------------------------------------

REDACTED = "REDACTED"
"""What a redacted query value becomes (the OpenTelemetry HTTP conventions' word)."""

DEFAULT_REDACTED_QUERY_PARAMS: tuple[str, ...] = (
    # Named by the OpenTelemetry HTTP semantic conventions (url.query, url.full).
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    # Pre-signed URLs of the big object stores.
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Credential",
    # Tokens and passwords apps put in links (password resets, magic links, OAuth callbacks).
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "code",
    "jwt",
    "session",
    "sessionid",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
)
"""``TRACK_USAGE_REDACT_QUERY_PARAMS`` by default. Names match case-insensitively, percent-decoded."""

DEFAULT_REDACTED_VIEW_ARGS: tuple[str, ...] = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "reset_token",
    "jwt",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "api_key",
    "apikey",
    "signature",
    "otp",
)
"""``TRACK_USAGE_REDACT_VIEW_ARGS`` by default: URL variables (``/reset/<token>``) whose values are
secrets. Names match case-insensitively. Narrower than the query list: a ``<code>`` or ``<key>`` in
a route is more often a product code or a lookup key than a secret."""


def secret_arguments(arguments: Iterable[str], names: frozenset[str]) -> tuple[str, ...]:
    """The URL variables of a rule (``rule.arguments``) whose values are secrets, by ``names`` (lower case)."""
    return tuple(sorted(name for name in arguments if name.lower() in names))


def redact_secrets(text: str, secrets: Iterable[tuple[str, str]]) -> str:
    """``text`` (a path, a URL) with the value of each secret (name, value) replaced by ``REDACTED``:
    as it is and in every percent-encoded spelling (any characters encoded, in either case).

    ``value`` is the decoded text the client sent (``"a+b="``); ``a%2bb%3D`` and ``a%2Bb=`` are
    the same value in a raw request target (the instrumentor's ``http.target``) or a full URL.
    """
    for _, secret in secrets:
        if not secret:
            continue  # an empty value hides nothing and replaces nothing
        if secret in text:
            text = text.replace(secret, REDACTED)
        if "%" in text:
            text = _redact_encoded(text, secret)
    return text


def _redact_encoded(text: str, secret: str) -> str:
    """``text`` with every run that percent-decodes (UTF-8) to ``secret`` replaced by ``REDACTED``."""
    try:
        wanted = secret.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no client can have sent it encoded
        return text
    # The decoded bytes of text, each with the span of text it came from.
    decoded = bytearray()
    starts: list[int] = []
    ends: list[int] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "%" and _is_hex(text[index + 1 : index + 3]):
            decoded.append(int(text[index + 1 : index + 3], 16))
            starts.append(index)
            ends.append(index + 3)
            index += 3
            continue
        encoded = char.encode("utf-8", "surrogatepass")
        decoded += encoded
        starts.extend([index] * len(encoded))
        ends.extend([index + 1] * len(encoded))
        index += 1
    pieces: list[str] = []
    done = 0  # text before this is in pieces
    found = decoded.find(wanted)
    while found != -1:
        start, end = starts[found], ends[found + len(wanted) - 1]
        if start >= done:
            pieces += (text[done:start], REDACTED)
            done = end
        found = decoded.find(wanted, found + len(wanted))
    return "".join(pieces) + text[done:] if pieces else text


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX


class QueryRedactor:
    """Replaces the values of secret query parameters with ``REDACTED``, keeping everything else.

    Built once per app; a query costs a split and a set lookup per parameter. Nothing is
    cached: a cache of query strings would be a cache of secrets.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(name.lower() for name in names)

    def query(self, query: str) -> str:
        """``query`` (without ``?``) with the value of every listed parameter replaced."""
        names = self.names
        if not query or not names:
            return query
        # One pass of C-level string methods per parameter: a regular expression searching
        # for any of the names (case-insensitive alternation) costs ten times as much.
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            key, _, value = part.partition("=")
            if not value:
                continue
            if "%" in key or "+" in key:
                key = unquote_plus(key)
            if key.lower() in names or key.strip().lower() in names:
                parts[index] = part[: part.index("=")] + "=" + REDACTED
                changed = True
        return "&".join(parts) if changed else query

    def url(self, url: str) -> str:
        """A full URL with its query redacted (and ``user:password@`` replaced, as OTel asks for ``url.full``)."""
        base, sep, rest = url.partition("?")
        if "@" in base:
            scheme, slashes, authority = base.partition("://")
            if slashes and "@" in authority.split("/", 1)[0]:
                host_and_path = authority.split("@", 1)[1]
                base = f"{scheme}://{REDACTED}:{REDACTED}@{host_and_path}"
        if not sep:
            return base
        query, hash_sign, fragment = rest.partition("#")
        return f"{base}?{self.query(query)}{hash_sign}{fragment}"


def redact_target(target: str, redactor: QueryRedactor) -> str:
    """An HTTP request target (``/path?query``) with its query redacted."""
    path, sep, query = target.partition("?")
    return f"{path}?{redactor.query(query)}" if sep else target


# -- other instrumentations' span attributes ---------------------------------------------

CLIENT_ADDRESS_ATTRIBUTES = frozenset(
    {
        "client.address",
        "client.socket.address",
        "network.peer.address",
        "net.peer.ip",
        "net.peer.name",
        "net.sock.peer.addr",
        "net.sock.peer.name",
        "http.client_ip",
        "enduser.ip",
    }
)
"""Attributes (current and older HTTP conventions) that hold the client's address."""

_FORWARDING_HEADERS = frozenset(
    {
        "x_forwarded_for",
        "forwarded",
        "x_real_ip",
        "true_client_ip",
        "cf_connecting_ip",
        "x_client_ip",
        "x_cluster_client_ip",
        "fastly_client_ip",
    }
)
_URL_ATTRIBUTES = frozenset({"url.full", "http.url"})
_TARGET_ATTRIBUTES = frozenset({"http.target"})
_PATH_ATTRIBUTES = frozenset({"url.path", *_TARGET_ATTRIBUTES, *_URL_ATTRIBUTES})
# Keys describing the server: a loopback test has the same address on both ends.
_SERVER_SIDE_PREFIXES = ("server.", "net.host.", "http.host", "http.server_name", "url.", "http.url", "host.")


def scrub_span_attributes(
    attributes: Mapping[str, Any] | None,
    environ: Mapping[str, Any],
    anonymizer: Anonymizer | None,
    redactor: QueryRedactor | None,
    secrets: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Replacement values for the attributes another instrumentation put on a span.

    With an ``anonymizer``: every attribute holding the client's address (by name, a
    forwarding header captured as ``http.request.header.*``, or a value equal to the
    raw ``REMOTE_ADDR`` or an ``X-Forwarded-For`` entry) gets the anonymized form. With a
    ``redactor``: query strings in ``url.query``, ``http.target``, ``url.full`` and
    ``http.url`` are redacted. With ``secrets`` (secret URL variables, as (name, value)): their values
    are replaced in ``url.path``, ``http.target``, ``url.full`` and ``http.url``. Returns
    only what must change.
    """
    if not attributes:
        return {}
    fixes: dict[str, Any] = {}
    raw: set[str] = set()
    if anonymizer is not None:
        remote = environ.get("REMOTE_ADDR")
        if remote:
            raw.add(remote)
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            raw.update(part.strip() for part in forwarded.split(",") if part.strip())
    for key, value in attributes.items():
        if (redactor is not None or secrets) and isinstance(value, str):
            fixed = value
            if redactor is not None:
                if key == "url.query":
                    fixed = redactor.query(value)
                elif key in _TARGET_ATTRIBUTES:
                    fixed = redact_target(value, redactor)
                elif key in _URL_ATTRIBUTES:
                    fixed = redactor.url(value)
            if secrets and key in _PATH_ATTRIBUTES:
                fixed = redact_secrets(fixed, secrets)
            if fixed != value:
                fixes[key] = fixed
                continue
        if anonymizer is None:
            continue
        if key.startswith("http.request.header."):
            header = key[len("http.request.header.") :].replace("-", "_").lower()
            if header in _FORWARDING_HEADERS or _mentions(value, raw):
                fixes[key] = _anonymize_value(value, anonymizer, chain=True)
        elif key in CLIENT_ADDRESS_ATTRIBUTES or (
            not key.startswith(_SERVER_SIDE_PREFIXES) and isinstance(value, str) and value in raw
        ):
            fixes[key] = _anonymize_value(value, anonymizer, chain=False)
    return fixes


def _mentions(value: Any, raw: set[str]) -> bool:
    values = value if isinstance(value, list | tuple) else (value,)
    return any(isinstance(v, str) and any(address in v for address in raw) for v in values)


def _anonymize_value(value: Any, anonymizer: Anonymizer, *, chain: bool) -> Any:
    def one(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        return (anonymizer.chain(text) if chain else anonymizer.address(text)) or _UNKNOWN

    if isinstance(value, list | tuple):
        return tuple(one(v) for v in value)
    return one(value)


# -- exports -----------------------------------------------------------------------------

_FORMULA_STARTS = frozenset("=+-@\t\r\n\x00\uff1d\uff0b\uff0d\uff20")
"""First characters that make a spreadsheet read a cell as a formula (OWASP's list, with
line breaks, NUL and the full-width forms some spreadsheets fold to the ASCII ones)."""


def spreadsheet_safe(value: str) -> str:
    """``value`` prefixed with ``'`` when a spreadsheet would run it as a formula (OWASP's advice)."""
    return "'" + value if value and value[0] in _FORMULA_STARTS else value
