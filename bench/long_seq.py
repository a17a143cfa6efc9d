"""Long histories: peak memory and training throughput of the sequence encoders at L = 200, 800
and 3,200, HSTU's dense attention (before) against its query-blocked attention (after), in one run.

    python bench/long_seq.py [--lengths 200,800,3200] [--batch 4] [--threads 2] [--steps 2]

Workload: a synthetic log of users with long histories (item ids drawn from 5,000, timestamps
increasing by random gaps), B sequences of exactly L items each; one training step = embedding
lookup, encoder forward over every position, a sampled-softmax-like loss, backward. HSTU is the
ML-1M recipe (2 blocks, 1 head, dqk = dv = 50, dim 50) with the relative time bias on.
  hstu dense    attn_block >= L: one block, the whole (B, H, L, L) score tensor and what
                autograd keeps of it (the attention as it was before blocking)
  hstu blocked  attn_block = 256: queries in blocks against the keys they reach, each block
                recomputed in backward; memory ~ B x H x 256 x L
  sasrec        the SASRec encoder (2 blocks, 1 head, FFN 50): torch's scaled_dot_product_attention
Every configuration runs in a fresh child process, so peak RSS (ru_maxrss) is its own. Printed per
row: peak RSS, the step's increment over the RSS before the first step (the activations, the part
that grows with L), positions/s (B x L / median step wall time), and per encoder the ratio of the
increment at 3,200 to that at 800 (target for HSTU: under 4x; the dense attention grows ~16x).
Timings on a shared machine are upper bounds: `uptime` load is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .`

DIM, N_ITEMS = 50, 5000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(kind: str, L: int, batch: int, steps: int, threads: int) -> dict:
    """One configuration in this process: -> {peak_mb, step_mb, positions_s}."""
    import torch

    from unirec_dist.models.encoders.hstu import HSTUEncoder
    from unirec_dist.models.encoders.sasrec import SASRecEncoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, N_ITEMS, (batch, L + 1), generator=g)
    times = torch.cumsum(torch.randint(1, 86_400, (batch, L + 1), generator=g), 1) + 978_300_000
    table = torch.nn.Embedding(N_ITEMS, DIM)
    if kind == "sasrec":
        enc = SASRecEncoder(DIM, L, num_blocks=2, num_heads=1, ffn_dim=DIM, dropout=0.2)
    else:
        enc = HSTUEncoder(DIM, L, num_blocks=2, num_heads=1, dqk=DIM, dv=DIM, dropout=0.2, time_bias=True,
                          attn_block=L if kind == "hstu-dense" else 256)
    enc.train()
    lengths = torch.full((batch,), L)
    kw = {"times": times} if kind != "sasrec" else {}

    def step() -> None:
        x = table(items[:, :-1])
        h = enc(x, lengths, **kw)
        q = torch.nn.functional.normalize(h, dim=-1)
        pos = torch.nn.functional.normalize(table(items[:, 1:]), dim=-1)
        neg = torch.nn.functional.normalize(table.weight[:128], dim=-1)
        logits = torch.cat([(q * pos).sum(-1, keepdim=True), q @ neg.T], -1) / 0.05
        torch.nn.functional.cross_entropy(logits.reshape(-1, 129), torch.zeros(batch * L, dtype=torch.long)).backward()
        table.zero_grad(set_to_none=True)
        enc.zero_grad(set_to_none=True)

    before = _rss_mb()
    walls = []
    for _ in range(steps + 1):          # the first step is a warm-up
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "step_mb": peak - before, "positions_s": batch * L / statistics.median(walls[1:])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="200,800,3200")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="hstu-dense,hstu-blocked,sasrec")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # child: kind,L
    a = ap.parse_args()
    if a.one:
        kind, L = a.one.split(",")
        print(json.dumps(one(kind, int(L), a.batch, a.steps, a.threads)))
        return 0
    lengths = [int(x) for x in a.lengths.split(",")]
    print(f"load before: {os.getloadavg()[0]:.1f}; batch {a.batch}, threads {a.threads}, steps {a.steps} (+1 warm-up)")
    print(f"{'encoder':<14}{'L':>6}{'peak RSS MB':>13}{'step MB':>10}{'positions/s':>13}")
    res: dict[tuple[str, int], dict] = {}
    for kind in a.kinds.split(","):
        for L in lengths:
            cmd = [sys.executable, __file__, "--one", f"{kind},{L}", "--batch", str(a.batch),
                   "--steps", str(a.steps), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if out.returncode != 0:
                print(f"{kind:<14}{L:>6}  failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = res[(kind, L)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{kind:<14}{L:>6}{r['peak_mb']:>13.0f}{r['step_mb']:>10.0f}{r['positions_s']:>13.0f}")
    if 800 in lengths and 3200 in lengths:
        for kind in a.kinds.split(","):
            if (kind, 800) in res and (kind, 3200) in res:
                lo, hi = res[(kind, 800)], res[(kind, 3200)]
                print(f"{kind}: 3,200 vs 800: step memory x{hi['step_mb'] / max(lo['step_mb'], 1):.1f}, "
                      f"peak RSS x{hi['peak_mb'] / lo['peak_mb']:.1f} (target for HSTU: < 4x)")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
