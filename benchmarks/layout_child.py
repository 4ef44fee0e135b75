"""The measured process of ``bench_instructions.py``: moves the interpreter's type version tags for
its layout, then runs the benchmark's child.

CPython's method cache finds a slot from a type's version tag and the looked-up name's address,
and tags are handed out in the order types are first looked up: a class added anywhere in the
package moves every later type's slot, and one collision more on a hot lookup shows as a few
thousand instructions a request. Each layout makes a different number of throwaway classes
before anything else is imported, so the median over layouts does not hang on one arrangement.
"""

import os
import runpy
import sys
from pathlib import Path

TYPES_PER_LAYOUT_BYTE = 1 / 10


def shift_type_tags(count: int) -> list[type]:
    """``count`` throwaway classes, each looked up once so it takes the next version tag."""
    shifted = [type(f"_Layout{i}", (), {}) for i in range(count)]
    for cls in shifted:
        getattr(cls, "layout", None)
    return shifted


if __name__ == "__main__":
    _kept = shift_type_tags(int(len(os.environ.get("BENCH_LAYOUT_PADDING", "")) * TYPES_PER_LAYOUT_BYTE))
    sys.argv[0] = str(Path(__file__).with_name("bench_instructions.py"))
    sys.path.insert(0, str(Path(__file__).parent))
    runpy.run_path(sys.argv[0], run_name="__main__")
