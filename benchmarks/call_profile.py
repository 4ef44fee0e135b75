"""Python-level attribution for the instruction counts: cProfile over the same window, every thread.

Callgrind names the interpreter's C functions (dict lookups, frame evaluation, sqlite3), not the
Python functions that made them run. This runs one variant in process, exactly as
bench_instructions measures it (warm-up, drain, then the measured requests and a drain), with a
profiler in every thread, and prints per request (request thread) and per row (other threads)
the most called Python functions with their own and cumulative time. Call counts are exact;
times are cProfile's, inflated by it and by waits for the GIL, and only hint.

    python benchmarks/call_profile.py ours_sql [--requests 500] [--warmup 300] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apps import build_app
from bench_instructions import BY_KEY
from bench_requests import drive, prebuilt_environs

# Profilers of the threads the variant starts, by thread name.
_profilers: dict[str, cProfile.Profile] = {}


def _start_profiler_in_this_thread(frame: Any, event: str, arg: Any) -> None:
    """Runs once, as a new thread's first profile event: hands the thread to a cProfile of its own."""
    sys.setprofile(None)
    profiler = cProfile.Profile()
    _profilers[threading.current_thread().name] = profiler
    profiler.enable()


def profile(key: str, requests: int, warmup: int) -> tuple[pstats.Stats, dict[str, pstats.Stats], dict[str, int]]:
    """(request thread's stats, every other thread's stats by name, the work done) for the window."""
    threading.setprofile(_start_profiler_in_this_thread)  # every thread the variant starts
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-calls-{key}-"))
    app = build_app(f"calls_{key}")
    setup = BY_KEY[key].setup(app, workdir)
    try:
        environs = prebuilt_environs()
        drive(app.wsgi_app, environs, warmup)
        drain = setup.drain or (lambda: None)
        drain()
        before = setup.work() if setup.work else {}
        for background in _profilers.values():
            background.clear()  # forget the warm-up; those threads are idle after the drain
        main = cProfile.Profile()
        main.enable()
        drive(app.wsgi_app, environs, requests)
        main.disable()
        drain()
        after = setup.work() if setup.work else {}
        others = {}
        for name, background in list(_profilers.items()):
            background.disable()  # only stops collecting here; the thread goes on unprofiled
            background.create_stats()
            if background.stats:  # type: ignore[attr-defined]  (a thread idle in the window has none)
                others[name] = pstats.Stats(background)
        return pstats.Stats(main), others, {k: after[k] - before.get(k, 0) for k in after}
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        setup.close()
        shutil.rmtree(workdir, ignore_errors=True)


def top_functions(stats: pstats.Stats, per: int, top: int, match: str | None = None, by: str = "calls") -> str:
    """The ``top`` functions by ``calls`` (exact, unlike the times) or ``cum`` time, divided by ``per``.

    ``match``: a regular expression the function's file must match (e.g. ``flask_usage_otel``).
    """
    pattern = re.compile(match) if match else None
    rows = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if pattern is not None and not pattern.search(filename):
            continue
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
        rows.append((calls, own, cumulative, f"{name} ({where})"))
    rows.sort(key=lambda row: row[2] if by == "cum" else row[0], reverse=True)
    out = io.StringIO()
    out.write(f"{'calls':>9} {'own µs':>9} {'cum µs':>9}  function\n")
    for calls, own, cumulative, label in rows[:top]:
        out.write(f"{calls / per:9.2f} {own / per * 1e6:9.2f} {cumulative / per * 1e6:9.2f}  {label}\n")
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=list(BY_KEY))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", help="only functions whose file matches this regular expression")
    parser.add_argument("--sort", choices=("calls", "cum"), default="calls", help="by calls or cumulative time")
    args = parser.parse_args(argv)
    main_stats, others, work = profile(args.variant, args.requests, args.warmup)
    print(f"{args.variant}: work in the window {work}")
    print(f"\nrequest thread, per request ({args.requests} requests)")
    print(top_functions(main_stats, args.requests, args.top, args.match, args.sort))
    rows = work.get("rows") or args.requests
    for name, stats in others.items():
        total_calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        if total_calls:
            print(f"\nthread {name}, per {'row' if work.get('rows') else 'request'} ({rows})")
            print(top_functions(stats, rows, args.top, args.match, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
