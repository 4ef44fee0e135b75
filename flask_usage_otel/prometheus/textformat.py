"""The pieces of the Prometheus text format and OpenMetrics that our own renderers write.

Each function writes exactly what prometheus_client's encoders write for the same value
(``prometheus_client.utils.floatToGoString``, the label escaping of ``exposition.generate_latest`` and
``openmetrics.exposition.generate_latest``), so that a scrape rendered here is byte for byte the one
prometheus_client would render; ``exposition.check_renderer`` and the tests compare them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.utils import floatToGoString

TEXT, OPENMETRICS = "text", "openmetrics"
EOF = "# EOF\n"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def plain_names(metric: str, labels: Iterable[str]) -> bool:
    """Whether every name is in the legacy character set: then every escaping scheme leaves it as it is."""
    return bool(_METRIC_NAME.match(metric)) and all(_LABEL_NAME.match(name) for name in labels)


def go_float(value: float) -> str:
    """``floatToGoString``: Go's spelling of a float (``+Inf``, ``NaN``, exponents past 1e6)."""
    text = repr(float(value))
    dot = text.find(".")
    if dot > 6 and value > 0:
        # Go's exponent: the library's own spelling, which changed over its releases (e+015, then e+15).
        return floatToGoString(value)
    if dot < 0:
        if text == "inf":
            return "+Inf"
        if text == "-inf":
            return "-Inf"
        if text == "nan":
            return "NaN"
    return text


_COUNTS: dict[float, str] = {}


def go_count(value: float) -> str:
    """``go_float`` of a bucket's running count (never -0.0), from a small cache: counts repeat across series."""
    text = _COUNTS.get(value)
    if text is None:
        text = go_float(value)
        if len(_COUNTS) < 4096:
            _COUNTS[value] = text
    return text


def escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_pairs(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """``name="value"`` of each pair, in the order given (the encoders sort by name first)."""
    return [f'{name}="{escape_value(value)}"' for name, value in pairs]


def braced(parts: list[str]) -> str:
    return "{" + ",".join(parts) + "}" if parts else ""


def le_split(label_names: Iterable[str]) -> int:
    """Where ``le`` falls among a bucket's sorted label names: how many sort before it."""
    return sum(1 for name in label_names if name < "le")


def le_parts(bounds: Iterable[float], before: int, after: int) -> list[str]:
    """The ``le="..."`` of each bound, with the commas that join it to the labels before and after it."""
    lead, trail = ("," if before else ""), ("," if after else "")
    return [f'{lead}le="{go_float(bound)}"{trail}' for bound in bounds]


def header(name: str, documentation: str, kind: str, form: str) -> str:
    """``# HELP`` and ``# TYPE`` of a family, escaped as each format escapes its help text."""
    # The text format leaves a double quote in help text as it is; OpenMetrics escapes it.
    help_text = documentation.replace("\\", r"\\").replace("\n", r"\n") if form == TEXT else escape_value(documentation)
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def exemplar_text(exemplar: object) -> str:
    """`` # {labels} value [timestamp]`` of an OpenMetrics exemplar."""
    labels: dict[str, str] = exemplar.labels  # type: ignore[attr-defined]
    inner = ",".join(label_pairs(sorted(labels.items())))
    value = go_float(exemplar.value)  # type: ignore[attr-defined]
    timestamp = exemplar.timestamp  # type: ignore[attr-defined]
    if timestamp is None:
        return f" # {{{inner}}} {value}"
    return f" # {{{inner}}} {value} {timestamp}"
