"""A small, dependency-free user-agent parser for the browser, platform and version, and the
synthetic-traffic classification (``user_agent.synthetic.type``).

Werkzeug dropped its parser in 2.1, which is why Flask-Track-Usage's ``ua_*``
columns became empty. This one covers the common browsers and bots with a few
ordered patterns; it runs on the storage writer's thread, never per request.

:func:`synthetic_type` sorts traffic as OpenTelemetry's semantic conventions do
(``user_agent.synthetic.type``): ``"test"`` for health checks, load-balancer probes and
synthetic monitoring, ``"bot"`` for crawlers, None for the rest. Its lists extend those of
opentelemetry-util-http (``alwayson``; ``googlebot``, ``bingbot``), so a span of ours and
one of the instrumentor agree where the instrumentor decides. Command-line and library
clients (curl, Wget, python-requests, Go's) are not classified: people use them as much as
scripts do.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple


class UserAgentInfo(NamedTuple):
    browser: str | None
    platform: str | None
    version: str | None
    synthetic: str | None = None
    """``user_agent.synthetic.type``: ``test`` for a probe or health check, ``bot`` for a crawler."""


_MAX_PARSED_LENGTH = 512  # longer strings are cut first: the regexes stay linear and cheap

# Order matters: Edge and Opera also say "Chrome", Chrome also says "Safari".
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("edge", r"Edg(?:e|A|iOS)?/([\d.]+)"),
        ("opera", r"(?:OPR|Opera)/([\d.]+)"),
        ("samsungbrowser", r"SamsungBrowser/([\d.]+)"),
        ("firefox", r"(?:Firefox|FxiOS)/([\d.]+)"),
        ("chrome", r"(?:Chrome|CriOS)/([\d.]+)"),
        ("safari", r"Version/([\d.]+).*Safari/"),
        ("msie", r"(?:MSIE |Trident/.*rv:)([\d.]+)"),
        ("googlebot", r"Googlebot/([\d.]+)"),
        ("bingbot", r"bingbot/([\d.]+)"),
        ("curl", r"^curl/([\d.]+)"),
        ("wget", r"^Wget/([\d.]+)"),
        ("python-requests", r"python-requests/([\d.]+)"),
        ("python-httpx", r"python-httpx/([\d.]+)"),
        # Not Werkzeug's test client: Werkzeug's own parser (Flask-Track-Usage's, up to Werkzeug 2.0) gave
        # None for it, and Flask-Track-Usage's tests check that.
    )
)

_PLATFORMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("android", r"Android"),
        ("iphone", r"iPhone"),
        ("ipad", r"iPad"),
        ("windows", r"Windows"),
        ("macos", r"Macintosh|Mac OS X"),
        ("chromeos", r"CrOS"),
        ("linux", r"Linux|X11"),
    )
)


# Lower-case substrings of the User-Agent. Health checks and probes first: a checker that calls
# itself a bot (Pingdom.com_bot) is a test. Keep each list short and each entry specific.
SYNTHETIC_TEST_AGENTS: tuple[str, ...] = (
    "alwayson",  # Azure App Service's Always On (opentelemetry-util-http's test pattern)
    "kube-probe",  # Kubernetes liveness, readiness and startup probes
    "googlehc",  # Google Cloud load balancer health checks
    "elb-healthchecker",  # AWS load balancers
    "amazon-route53-health-check",
    "azure traffic manager endpoint monitor",
    "consul health check",
    "blackbox exporter",  # Prometheus' blackbox_exporter
    "uptimerobot",
    "pingdom",
    "statuscake",
    "site24x7",
    "datadogsynthetics",
    "newrelicsynthetics",
    "healthcheck",  # HAProxy, Docker, Envoy and others name their checker so
    "health-check",
)
SYNTHETIC_BOT_AGENTS: tuple[str, ...] = (
    "googlebot",
    "bingbot",
    "adsbot-google",
    "mediapartners-google",
    "google-inspectiontool",
    "applebot",
    "duckduckbot",
    "yandexbot",
    "baiduspider",
    "slurp",  # Yahoo
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "ahrefsbot",
    "semrushbot",
    "mj12bot",
    "petalbot",
    "amazonbot",
    "bytespider",
    "gptbot",
    "claudebot",
    "ccbot",
    "perplexitybot",
)

_SYNTHETIC_TEST_RE = re.compile("|".join(map(re.escape, SYNTHETIC_TEST_AGENTS)), re.IGNORECASE)
_SYNTHETIC_BOT_RE = re.compile("|".join(map(re.escape, SYNTHETIC_BOT_AGENTS)), re.IGNORECASE)


def synthetic_type(user_agent: str | None) -> str | None:
    """``"test"`` for a probe or health check, ``"bot"`` for a crawler, None otherwise (and for no header).

    The value of OpenTelemetry's ``user_agent.synthetic.type``. Cached per distinct header
    (its first 512 characters), so a probe that calls every few seconds costs one dict lookup.
    """
    if not user_agent:
        return None
    return _synthetic(user_agent[:_MAX_PARSED_LENGTH])


@lru_cache(maxsize=1024)
def _synthetic(text: str) -> str | None:
    if _SYNTHETIC_TEST_RE.search(text):
        return "test"
    if _SYNTHETIC_BOT_RE.search(text):
        return "bot"
    return None


LONGEST_NAME = max(len(name) for name, _ in (*_BROWSERS, *_PLATFORMS))
"""The longest ``browser`` or ``platform`` a parse gives."""


def parse_user_agent(user_agent: str | None) -> UserAgentInfo:
    """Parse a ``User-Agent`` header into (browser, platform, version); unknown parts are None."""
    if not user_agent:
        return UserAgentInfo(None, None, None)
    # Cached by what is parsed, not the whole header: a cache of 8 KB headers would hold megabytes.
    return _parse(user_agent[:_MAX_PARSED_LENGTH])


@lru_cache(maxsize=1024)
def _parse(text: str) -> UserAgentInfo:
    browser = version = None
    for name, pattern in _BROWSERS:
        match = pattern.search(text)
        if match:
            browser, version = name, match.group(1)
            break
    platform = next((name for name, pattern in _PLATFORMS if pattern.search(text)), None)
    return UserAgentInfo(browser, platform, version, _synthetic(text))
