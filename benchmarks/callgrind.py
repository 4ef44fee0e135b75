"""Instruction counts under valgrind's callgrind: the in-process switch and the reading of its files.

The switch is a tiny C library built on first use from valgrind's own client-request macros
(``valgrind/callgrind.h``) and loaded with ctypes, so the measured process itself turns counting
on right before its measured requests and off right after, with no signal or timing race.
Outside valgrind every call is a no-op (the macros compile to a few instructions that do nothing).

Callgrind is run with ``--separate-threads=yes``: every thread gets its own file per dump, so the
request thread's count is read apart from the writer's and the span exporter's. A client-request
dump writes the *calling* thread's counts only; the other threads' counts go to the files written
at exit, which is why every non-request thread is read whole.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HELPER_SOURCE = """\
#include <valgrind/callgrind.h>
int bench_running_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void bench_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void bench_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void bench_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""

INSTALL_HINT = "valgrind and a C compiler are needed: apt-get install valgrind gcc (or run benchmarks/ensure_tools.sh)"
HEADER = Path("/usr/include/valgrind/callgrind.h")

# The request thread is the process's first thread: callgrind numbers it 1.
REQUEST_THREAD = 1

_FILE_NAME = re.compile(r"\.out(?:\.(?P<part>\d+))?-(?P<thread>\d+)$")


class ToolMissing(Exception):
    """valgrind, its headers or a C compiler is not installed; the message says what to install."""


def missing_tools() -> str | None:
    """None when callgrind can run here, else what is missing and how to install it."""
    missing = [tool for tool in ("valgrind", "cc") if shutil.which(tool) is None]
    if not HEADER.exists():
        missing.append(str(HEADER))
    return f"missing {', '.join(missing)}; {INSTALL_HINT}" if missing else None


def helper_path(cache_dir: Path | None = None) -> Path:
    """The switch library, compiled once per source text into ``cache_dir`` (default: a folder in /tmp)."""
    problem = missing_tools()
    if problem:
        raise ToolMissing(problem)
    digest = hashlib.sha256(HELPER_SOURCE.encode()).hexdigest()[:12]
    folder = cache_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-callgrind-{os.getuid()}"
    library = folder / f"callgrind_switch-{digest}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"callgrind_switch-{digest}.c"
    source.write_text(HELPER_SOURCE, encoding="utf-8")
    partial = library.with_suffix(f".{os.getpid()}.tmp")
    # -O1: the client-request macros are inline assembly; optimisation only trims the call frames.
    build = subprocess.run(
        ["cc", "-O1", "-shared", "-fPIC", "-o", str(partial), str(source)], capture_output=True, text=True
    )
    if build.returncode != 0:
        raise ToolMissing(f"building the callgrind switch failed: {build.stderr.strip()}")
    partial.replace(library)  # atomic: a concurrent build never loads half a file
    return library


class Switch:
    """Turns callgrind's counting on and off from inside the measured process."""

    def __init__(self, library: Path | None) -> None:
        self._lib = ctypes.CDLL(str(library)) if library is not None else None
        if self._lib is not None:
            self._lib.bench_dump.argtypes = [ctypes.c_char_p]

    @property
    def under_valgrind(self) -> bool:
        return bool(self._lib is not None and self._lib.bench_running_on_valgrind())

    def start(self) -> None:
        """Zero the counters and start counting (every thread)."""
        if self._lib is not None:
            self._lib.bench_start()

    def dump(self, label: str) -> None:
        """Write the calling thread's counts so far to a file of their own and zero them."""
        if self._lib is not None:
            self._lib.bench_dump(label.encode())

    def stop(self) -> None:
        if self._lib is not None:
            self._lib.bench_stop()


def command(out_file: Path, argv: list[str]) -> list[str]:
    """``argv`` under callgrind, counting nothing until the process's switch turns it on."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out_file}",
        *argv,
    ]


@dataclass(frozen=True)
class Part:
    """One thread's counts in one dump: ``part`` is the dump's number (None: the dump at exit)."""

    path: Path
    thread: int
    part: int | None
    trigger: str
    instructions: int


def read_parts(out_file: Path) -> list[Part]:
    """Every per-thread file callgrind wrote for ``out_file``."""
    parts = []
    for path in sorted(out_file.parent.glob(out_file.name + "*")):
        match = _FILE_NAME.search(path.name)
        if match is None:
            continue
        totals = trigger = None
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("desc: Trigger:"):
                    trigger = line.split(":", 2)[2].strip()
                elif line.startswith("totals:"):
                    totals = int(line.split()[1])
        if totals is None:
            raise ValueError(f"{path} has no totals line: callgrind stopped before writing it")
        part = match.group("part")
        parts.append(Part(path, int(match.group("thread")), int(part) if part else None, trigger or "", totals))
    return parts


@dataclass(frozen=True)
class Counts:
    """Instructions of one measured window: the requests on their thread, and everything else."""

    request_thread: int  # the request loop, on the thread that ran it
    request_thread_drain: int  # the drain (flush) call, on the same thread
    other_threads: int  # every other thread, from the start of counting to its stop
    threads: int

    @property
    def total(self) -> int:
        return self.request_thread + self.request_thread_drain + self.other_threads

    @property
    def background(self) -> int:
        """All work done for the requests outside the request loop itself."""
        return self.request_thread_drain + self.other_threads


def counts(parts: list[Part], requests_label: str, drain_label: str) -> Counts:
    """Split a run's files into the request loop, the drain and the other threads."""

    def on_request_thread(label: str) -> int:
        found = [p.instructions for p in parts if p.thread == REQUEST_THREAD and p.trigger.endswith(label)]
        if len(found) != 1:
            raise ValueError(f"expected one dump labelled {label!r} for the request thread, found {len(found)}")
        return found[0]

    # The request thread's file at exit holds only the switch's own stop call: left out.
    others = sum(p.instructions for p in parts if p.thread != REQUEST_THREAD)
    return Counts(
        request_thread=on_request_thread(requests_label),
        request_thread_drain=on_request_thread(drain_label),
        other_threads=others,
        threads=len({p.thread for p in parts}),
    )


def annotate(paths: list[Path], top: int = 25) -> str:
    """callgrind_annotate's per-function totals (exclusive) over ``paths``, the ``top`` largest."""
    if shutil.which("callgrind_annotate") is None:
        return "callgrind_annotate not found"
    out = []
    for path in paths:
        result = subprocess.run(
            ["callgrind_annotate", "--threshold=99", str(path)], capture_output=True, text=True, check=False
        )
        out.append(_top_lines(result.stdout, top) if result.returncode == 0 else result.stderr)
    return "\n".join(out)


def _top_lines(report: str, top: int) -> str:
    """The summary lines and the ``top`` heaviest functions of one callgrind_annotate report."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if "file:function" in line), None)
    if start is None:
        return report
    body = [line for line in lines[start + 2 :] if line.strip()][:top]
    return "\n".join([*lines[start - 2 : start + 2], *body])


if __name__ == "__main__":  # python callgrind.py: build the switch and say where it is
    try:
        print(helper_path())
    except ToolMissing as exc:
        sys.exit(str(exc))
