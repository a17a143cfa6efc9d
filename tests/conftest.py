from __future__ import annotations

import os

# Keep tests on the CPU thread budget of the CI machine (2 cores) and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
