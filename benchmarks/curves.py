"""Cost curves: fit how a cost grows with a size, and draw it (for bench_curves.py and the docs).

A curve is measured at three or more sizes. Two fits are given for each: the power law
``cost ~ c * size**k`` (least squares on log-log; ``k`` names the growth: about 0 constant, about 1
linear, about 2 quadratic) and the straight line ``cost = a + b * size`` whose slope ``b`` is the
figure an operator sizes with (milliseconds per 1,000 label sets, bytes per row...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def power_exponent(sizes: Sequence[float], costs: Sequence[float]) -> float:
    """``k`` of the least-squares fit of ``log(cost) = log(c) + k * log(size)``."""
    points = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs, strict=True) if s > 0 and c > 0]
    if len(points) < 2:
        raise ValueError("a growth needs two or more positive points")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        raise ValueError("a growth needs two or more different sizes")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def straight_line(sizes: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` of the least-squares line ``cost = a + b * size``."""
    n = len(sizes)
    mean_x, mean_y = sum(sizes) / n, sum(costs) / n
    spread = sum((x - mean_x) ** 2 for x in sizes)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, costs, strict=True)) / spread if spread else 0.0
    return mean_y - b * mean_x, b


def growth_name(exponent: float) -> str:
    """The growth a power-law exponent stands for (n log n cannot be told from linear over 2 decades)."""
    if exponent < 0.2:
        return "constant"
    if exponent < 0.75:
        return "sub-linear"
    if exponent < 1.3:
        return "linear"
    if exponent < 1.75:
        return "super-linear"
    return "quadratic or worse"


def fit(sizes: Sequence[float], costs: Sequence[float]) -> dict[str, Any]:
    """Both fits and the growth's name, as stored in the JSON and shown in the docs."""
    exponent = power_exponent(sizes, costs)
    intercept, slope = straight_line(sizes, costs)
    mean = sum(costs) / len(costs)
    total = sum((c - mean) ** 2 for c in costs)
    residual = sum((c - intercept - slope * s) ** 2 for s, c in zip(sizes, costs, strict=True))
    return {
        "exponent": round(exponent, 3),
        "growth": growth_name(exponent),
        "intercept": intercept,
        "slope": slope,
        "line_r2": round(1 - residual / total, 4) if total else 1.0,
    }


def plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    log_x: bool = True,
    log_y: bool = True,
) -> Path:
    """One PNG: each series' points joined, labelled with its fitted growth."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the benchmark writes files
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, (sizes, costs) in series.items():
        fitted = fit(sizes, costs)
        # A label of its own ("...{a}...{b}...") names a straight-line fit; else the power law's growth.
        name = label.format(**fitted) if "{" in label else f"{label} ({fitted['growth']}, k={fitted['exponent']:.2f})"
        axes.plot(sizes, costs, marker="o", label=name)
    if log_x:
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.4)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
