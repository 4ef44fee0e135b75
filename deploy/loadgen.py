"""A small load generator for the docker-compose demo: a steady mix of requests over every route.

    python deploy/loadgen.py --base-url http://app:8000 --rate 20

Standard library only, so it runs in the app's image or anywhere with Python 3.10+. It runs
until stopped (``--duration`` bounds it) and never stops on a failed request: the app
restarting is part of what the dashboards should show.
"""

from __future__ import annotations

import argparse
import base64
import random
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

# (weight, method, path template, user): most traffic is reads; some errors, 404s, slow and streamed calls.
MIX: list[tuple[int, str, str, str | None]] = [
    (30, "GET", "/", None),
    (25, "GET", "/api/items/{item}", "alice"),
    (10, "POST", "/api/items", "bob"),
    (8, "GET", "/slow", None),
    (6, "GET", "/stream", "carol"),
    (5, "GET", "/api/items/{missing}", None),  # 404 from the view
    (4, "GET", "/no/such/page/{item}", None),  # unmatched: one route label, whatever the path
    (3, "GET", "/error", "alice"),  # 500
    (2, "DELETE", "/", None),  # 405
]


def pick(rng: random.Random) -> tuple[str, str, str | None]:
    weights = [w for w, *_ in MIX]
    _, method, template, user = rng.choices(MIX, weights=weights)[0]
    path = template.format(item=rng.randint(1, 500), missing=rng.randint(1001, 5000))
    return method, path, user


def send(base_url: str, method: str, path: str, user: str | None, timeout: float) -> str:
    """One request; its status code, or the kind of failure."""
    headers = {"User-Agent": "flask-usage-otel-loadgen"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:secret".encode()).decode()
    data = b"{}" if method == "POST" else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 runs until stopped")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    rng = random.Random(args.seed)
    statuses: Counter[str] = Counter()
    interval = 1.0 / args.rate
    started = next_report = time.monotonic()
    try:
        while not stopping and (args.duration <= 0 or time.monotonic() - started < args.duration):
            began = time.monotonic()
            statuses[send(args.base_url, *pick(rng), args.timeout)] += 1
            if began >= next_report:
                print("loadgen:", dict(sorted(statuses.items())), flush=True)
                next_report = began + 30
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("loadgen: done", dict(sorted(statuses.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
