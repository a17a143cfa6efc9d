#!/usr/bin/env bash
# The GPU path in one script, for a CUDA machine, within about 8 minutes:
#   1. `make install TARGET=cuda` into its own venv (the CUDA torch/FBGEMM pairing of requirements/cuda.txt)
#   2. the test suite's GPU-marked tests (`pytest -m gpu`: NCCL, fused Adam, GPU topology, 1-GPU pretrain)
#   3. MovieLens-1M: fetch, prepare, `unirec pretrain --workers 1` on the GPU (NCCL process group,
#      TorchRec DMP with the FBGEMM fused Adam on the tables, TorchRec's TrainPipelineSparseDist:
#      `distributed.train_pipeline=sparse_dist`, the next batch's input distribution on its own CUDA
#      stream while this one computes), then validation NDCG@10 (full ranking, seen items masked,
#      `unirec evaluate --split valid`)
#   4. prints positions/s (target positions after 3 warm-up steps), peak GPU memory of the worker
#      (torch allocator high-water mark) and its host memory, the pipelined tables, and the wall
#      time of each stage.
#
#   bash bench/gpu_check.sh            # VENV=.venv-cuda OUT=runs/gpu-check STEPS=1500 to change
#
# Needs: nvidia-smi, a CUDA driver for cu126, the package index of CUDA_INDEX (Makefile) reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-cuda}
OUT=${OUT:-runs/gpu-check}
STEPS=${STEPS:-1500}
T0=$SECONDS
stage() { echo "== $1 ($((SECONDS - T0)) s)"; }

stage "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
stage "install (make install TARGET=cuda VENV=$VENV)"
make install TARGET=cuda VENV="$VENV"
PY=$VENV/bin/python
UNIREC=$VENV/bin/unirec
$PY -c "import torch, fbgemm_gpu, torchrec; assert torch.cuda.is_available(), 'CUDA not available'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

stage "GPU-marked tests"
$PY -m pytest -q -m gpu tests -p no:cacheprovider

stage "MovieLens-1M: fetch + prepare"
mkdir -p "$OUT"
$UNIREC data fetch movielens-1m
[ -e "$OUT/ml-1m/manifest.json" ] || $UNIREC prepare --config configs/datasets/ml-1m.yaml --out "$OUT/ml-1m"

stage "pretrain: 1 GPU, NCCL, fused Adam on the tables, TrainPipelineSparseDist, $STEPS steps"
rm -rf "$OUT/pretrain"
$UNIREC pretrain --config configs/pretrain/ml-1m-sasrec.yaml --workers 1 --no-progress \
    data.path="$OUT/ml-1m" trainer.out_dir="$OUT/pretrain" distributed.device=cuda optim.tables=adam \
    distributed.train_pipeline=sparse_dist \
    trainer.max_steps="$STEPS" trainer.threads=4

stage "validation NDCG@10 (full ranking, seen items masked)"
$UNIREC evaluate --checkpoint "$OUT/pretrain/checkpoints/final" --split valid --k 10 --mask-seen \
    --out "$OUT/valid.json" --overwrite

stage "figures"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
s = json.loads((out / "pretrain" / "pretrain.json").read_text())
(w,) = s["worker_stats"]
v = json.loads((out / "valid.json").read_text())
m = json.loads((out / "pretrain" / "checkpoints" / "final" / "manifest.json").read_text())
print("train pipeline:", m.get("train_pipeline"))
def flat(d, p=""):
    for k, val in d.items():
        if isinstance(val, dict):
            yield from flat(val, f"{p}{k}/")
        else:
            yield f"{p}{k}", val
ndcg = [val for k, val in flat(v) if k.endswith("NDCG@10")]
print(f"device {s['device']}, {s['steps']} steps, plan: "
      + ", ".join(f"{n} {t['sharding_type']}" for n, t in s["plan"]["tables"].items()))
print(f"positions/s {w['positions'] / w['train_s']:,.0f} ({w['positions']:,} target positions in {w['train_s']:.1f} s "
      f"after warm-up)")
print(f"GPU memory peak {w.get('gpu_peak_mib', float('nan')):,.0f} MiB; host VmHWM {w['hwm_mib']:,.0f} MiB")
print(f"validation NDCG@10 (seen masked) {ndcg[0] if ndcg else 'missing'}")
PY
stage "done"
