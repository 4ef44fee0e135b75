"""Text derived from a request's raw parts: its full URL (``request.url``) and its first language.

Computed on the storage writer's thread for every row, so each keeps a fast path for the usual case.
"""

from __future__ import annotations

import re

from werkzeug.sansio.utils import get_current_url, get_host

# Characters that Werkzeug's quote leaves as they are and uri_to_iri does not touch (no "%"):
# a path or query made only of these is copied into the URL as it is. A search for any other
# character is cheaper than a full match of the allowed ones.
_PATH_NEEDS_WORK = re.compile(r"[^A-Za-z0-9_.~!$&'()*+,/:;=@-]").search
_QUERY_NEEDS_WORK = re.compile(r"[^A-Za-z0-9_.~!$&'()*+,/:;=?@-]").search
_PREFIXES: dict[tuple[str, str, str], str | None] = {}
_MAX_PREFIXES = 256


def full_url(scheme: str, host: str, script_root: str, path: str, query_string: str) -> str:
    """What ``request.url`` gives for these request parts (Werkzeug's ``get_current_url``).

    Most URLs are plain ASCII: for them the scheme, host and script root are normalised
    once per distinct value (cached) and the path and query are appended as they are,
    the same text Werkzeug's quoting and IRI decoding would give, in a fraction of the time.
    """
    key = (scheme, host, script_root)
    prefix = _PREFIXES.get(key)
    if prefix is None and key not in _PREFIXES:
        if len(_PREFIXES) >= _MAX_PREFIXES:  # hosts come from clients: keep the cache bounded
            _PREFIXES.clear()
        prefix = _PREFIXES[key] = _url_prefix(scheme, host, script_root)
    if prefix is not None and not _PATH_NEEDS_WORK(path) and not (query_string and _QUERY_NEEDS_WORK(query_string)):
        tail = path.lstrip("/")
        return f"{prefix}{tail}?{query_string}" if query_string else prefix + tail
    try:
        return get_current_url(scheme, get_host(scheme, host), script_root, path, query_string.encode())
    except UnicodeError:  # a lone surrogate: the caller decides (values_url cleans the text and asks again)
        raise
    except ValueError:  # a Host Werkzeug < 3 cannot split as a URL ("[", an unclosed IPv6 bracket): kept as sent
        root = script_root.strip("/")
        url = f"{scheme}://{host}/" + (f"{root}/" if root else "") + path.lstrip("/")
        return f"{url}?{query_string}" if query_string else url


def _url_prefix(scheme: str, host: str, script_root: str) -> str | None:
    """``scheme://host/script_root/`` as ``request.url`` starts, or None when only the slow path is exact."""
    normalised = get_host(scheme, host)
    if not normalised:
        return None
    try:
        prefix = get_current_url(scheme, normalised, script_root, "")
    except UnicodeError:
        raise
    except ValueError:  # Werkzeug < 3 refuses some hosts (an unclosed IPv6 bracket): the slow path decides
        return None
    return prefix if prefix.endswith("/") else None


def first_language(accept_language: str | None) -> str | None:
    """The first language tag of an ``Accept-Language`` value, or None when there is none."""
    if not accept_language:
        return None
    tag = accept_language.split(",", 1)[0].split(";", 1)[0].strip()
    if not tag or tag == "*" or len(tag) > 35 or not all(c.isalnum() or c == "-" for c in tag):
        return None
    return tag
