"""The route inventory: ``<prefix>route_info``, one series per URL rule and method an app registers.

A request series exists only once a route has served a request, so Prometheus cannot say
which routes were never used. This collector lists every rule of every app it was given,
read from ``app.url_map`` at each scrape (a blueprint registered after ``init_app`` shows up
at the next one), as an info-style gauge with the value 1::

    flask_usage_route_info{route="/items/<int:item_id>",method="GET",blueprint="",endpoint="item"} 1

One series per rule and method, whatever the traffic: it adds no cardinality to the request
metrics. Routes that served no request in 30 days::

    flask_usage_route_info unless on (route, method) (increase(flask_usage_requests_total[30d]) > 0)

It keeps no values, so it needs no multiprocess file: every worker has the same URL map, and
the ``/metrics`` view adds it to the registry it merges the workers' files into.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..filters import blueprint_of
from ..record import OTHER, method_label

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.routing import Rule

ROUTE_INFO_LABELS = ("route", "method", "blueprint", "endpoint")


class RouteInventory(Collector):
    """Collects ``<prefix>route_info`` from the URL maps of the apps added to it."""

    def __init__(self, name: str, const_labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.name = name
        self._const_names = tuple(name for name, _ in const_labels)
        self._const_values = tuple(value for _, value in const_labels)
        self._apps: weakref.WeakKeyDictionary[Flask, Callable[[Rule], bool]] = weakref.WeakKeyDictionary()

    def add(self, app: Flask, tracked: Callable[[Rule], bool] = lambda rule: True) -> None:
        """List ``app``'s routes from now on (for as long as the app exists), those ``tracked`` accepts.

        ``tracked`` must not hold the app itself: it would keep the app alive.
        """
        self._apps[app] = tracked

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        seen: set[tuple[str, ...]] = set()
        for app, tracked in list(self._apps.items()):
            for labels in route_labels(app, tracked):
                if labels not in seen:
                    seen.add(labels)
                    family.add_metric((*labels, *self._const_values), 1)
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.name,
            "Every URL rule and method the app registers (always 1), whether or not it served a request.",
            labels=(*ROUTE_INFO_LABELS, *self._const_names),
        )


def route_labels(app: Flask, tracked: Callable[[Rule], bool]) -> list[tuple[str, str, str, str]]:
    """(route, method, blueprint, endpoint) of each tracked rule and method of ``app``, as the request metrics
    label them.

    The methods Werkzeug and Flask add by themselves (``HEAD`` beside ``GET``, ``OPTIONS`` when
    Flask answers it) are left out, like the rules the app does not track (``/metrics`` among them):
    they would all show as routes nobody uses.
    """
    rows = []
    for rule in list(app.url_map.iter_rules()):
        if not tracked(rule):  # the metrics view too: the filter never tracks it
            continue
        blueprint = blueprint_of(rule.endpoint) or ""
        for method in _declared_methods(rule):
            rows.append((rule.rule, method, blueprint, rule.endpoint))
    return rows


def _declared_methods(rule: Rule) -> list[str]:
    methods = rule.methods
    if methods is None:  # a rule that accepts any method
        return [OTHER]
    declared = set(methods)
    if "GET" in declared:
        declared.discard("HEAD")
    if getattr(rule, "provide_automatic_options", False):
        declared.discard("OPTIONS")
    return sorted({method_label(m) for m in declared})
