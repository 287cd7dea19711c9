"""The cells' allocator settings: a freed large temporary is reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# three 16 MB temporaries (4,096 pages each) allocated and freed per step: 5 steps to settle, then the
# minor page faults of 10 more
PROBE = """
import resource, sys
if sys.argv[1] == "keep":
    from attrbench.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
x = torch.ones(512, 32, 256)
def step():
    y = x * 2.0; z = y + 1.0; w = z * 3.0; del y, z, w
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, cwd) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True, cwd=cwd
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_temporaries_are_reused_not_faulted_in_again(tmp_path):
    """Before: glibc handed freed 16 MB blocks back to the kernel, and the next ones page-faulted (and were
    zeroed) all over again: 8,160-122,560 faults for these 30 temporaries with its defaults (two or more
    temporaries' worth, depending on the heap's history). With the cells' settings, at most one."""
    kept = _faults("keep", tmp_path)
    assert kept <= 4096 + 100, (kept, _faults("default", tmp_path))
