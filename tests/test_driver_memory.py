"""The Ray driver's allocator setting: freed large arrays go back to the system."""

from __future__ import annotations

import subprocess
import sys

# 40 arrays of 8 MiB, each followed by a small live array, then the large ones freed
_PROGRAM = """
import sys
import numpy as np

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "mapped":
    from leanset.pipelines.engine.cluster import map_large_allocations

    assert map_large_allocations()
base = anon()
x = np.ones(1 << 20)
del x  # glibc's default raises its mapping bound to this size here
large, small = [], []
for _ in range(40):
    large.append(np.ones(1 << 20))
    small.append(np.ones(100))
del large
print(anon() - base)
"""


def _retained_mib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip())


def test_freed_large_arrays_leave_the_driver_once_mapped_on_their_own() -> None:
    assert _retained_mib("default") > 200  # glibc keeps them in the heap behind the small ones
    assert _retained_mib("mapped") < 40
