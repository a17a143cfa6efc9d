"""Per-process CPU setup (utils/device.configure_cpu): threads and the glibc allocator tuning."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from unirec_dist.utils.device import configure_cpu, tune_malloc
import torch
configure_cpu(int(sys.argv[1]))
# a 16 MiB tensor (one batch's activations): untuned glibc gives it its own mmap (and unmaps it
# when freed, so the next batch page-faults it in again); tuned, it comes from the [heap]
b = torch.ones(4 * 1024 * 1024)
lo, hi = next(tuple(int(x, 16) for x in line.split()[0].split("-"))
              for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
in_heap = lo <= b.data_ptr() < hi
print(json.dumps({"tuned": tune_malloc(), "threads": torch.get_num_threads(), "in_heap": in_heap}))
"""


def _probe(env_extra: dict) -> dict:
    import json

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE, "1"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_configure_cpu_sets_threads_and_keeps_large_blocks_in_the_heap():
    on = _probe({})
    assert on["tuned"] is True and on["threads"] == 1
    assert on["in_heap"] is True
    off = _probe({"UNIREC_TUNE_MALLOC": "0"})
    assert off["tuned"] is False and off["threads"] == 1
    assert off["in_heap"] is False
