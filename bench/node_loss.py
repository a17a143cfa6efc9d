"""A node lost mid-run, on a two-node Ray cluster simulated on this machine.

    python bench/node_loss.py [--down-s 10] [--users 60] [--arms recover,exhausted]

A head (1 CPU) and a second node (1 CPU) are `ray start` processes in their own process groups
(tests/ray_nodes.py); `unirec pretrain --address` joins them with 2 workers, one per node
(distributed.placement_strategy=STRICT_SPREAD), and checkpoints every 3 steps into a
distributed.storage_path both nodes see (8 steps in all). After the step-3 checkpoint one worker
stops (UNIREC_FAULT_ACTION=hang, utils/faults.py: the kill lands at a known step) and the second
node is killed: SIGKILL to its process group and every process below it (raylet, agents, the
worker on it), as when a machine is lost.

Arm "recover" (distributed.max_failures default 3): Ray Train ends the worker group, cannot place
two workers on one node and waits; `--down-s` seconds later a new node joins; the job restarts
from the step-3 checkpoint and finishes. Checked: exit 0, the restarted workers begin at step 4
(the global step continues), the final checkpoint is step 8 and `unirec evaluate` reads it.

Arm "exhausted" (distributed.max_failures=0): the same kill ends the run with one `error:` line
naming the last good checkpoint (exit 2); a node joins again and the same command with --resume
continues from that checkpoint (its workers begin at step 4) and finishes.

Prints the phases' seconds (stall, kill to group torn down, node back to first resumed step, to
the end) and the checks. Timings on a shared 2-core machine are upper bounds: note `uptime`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ray_nodes import RayNodes, ray_env, trace_runs, wait_for  # noqa: E402


def pretrain_cmd(dataset: Path, out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unirec_dist", "pretrain", "--config", "configs/pretrain/debug.yaml",
            "--no-progress", "--workers", "2", "--address", address, f"data.path={dataset}",
            f"trainer.out_dir={out}", "data.batch_size=8", "trainer.max_epochs=2",
            "distributed.sharding.t_item=row_wise", "distributed.checkpoint_every_n_steps=3",
            "distributed.placement_strategy=STRICT_SPREAD", f"distributed.storage_path={out.parent / 'shared'}",
            *extra]


def stall_and_kill(nodes: RayNodes, node: subprocess.Popen, proc: subprocess.Popen, faults: Path, log: Path,
                   t: dict[str, float], t0: float) -> dict:
    """Wait for the stall after step 3, kill `node`; returns the first attempt's workers."""
    trace = faults / "trace.txt"
    wait_for("a worker to stall after step 3", (faults / "stalled").exists, 600, proc, log)
    wait_for("both workers at step 3", lambda: sum(3 in v for v in trace_runs(trace).values()) == 2, 120, proc, log)
    t["stalled_after_step_3"] = time.monotonic() - t0
    first = trace_runs(trace)
    lost = nodes.kill_node(node)
    t["killed"] = time.monotonic() - t0
    on_lost = [w for w in first if w[1] in lost]
    assert len(first) == 2 and len(on_lost) == 1, (first, lost)     # one worker per node
    return first


def arm_recover(nodes, node, dataset, work, faults, down_s) -> dict:
    out, log = work / "recover" / "run", work / "recover.log"
    out.parent.mkdir(parents=True)
    t: dict[str, float] = {}
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(pretrain_cmd(dataset, out, nodes.gcs), cwd=ROOT, env=ray_env(PYTHONPATH=str(ROOT)),
                                stdout=f, stderr=subprocess.STDOUT)
    first = stall_and_kill(nodes, node, proc, faults, log, t, t0)
    (survivor,) = [w for w in first if psutil.pid_exists(w[1])] or [None]
    if survivor is not None:
        wait_for("the worker group to be torn down", lambda: not psutil.pid_exists(survivor[1]), 300, proc, log)
    t["group_torn_down"] = time.monotonic() - t0
    time.sleep(down_s)
    waited = proc.poll() is None      # still running without the node: waiting for capacity
    node = nodes.add_node(num_cpus=1, name="node-recover")
    t["node_back"] = time.monotonic() - t0
    trace = faults / "trace.txt"
    wait_for("a resumed step", lambda: any(w not in first for w in trace_runs(trace)), 600, proc, log)
    t["first_resumed_step"] = time.monotonic() - t0
    rc = proc.wait(timeout=900)
    t["done"] = time.monotonic() - t0
    runs = trace_runs(trace)
    restarted = sorted(v for w, v in runs.items() if w not in first)
    final = out / "checkpoints" / "final"
    manifest = json.loads((final / "manifest.json").read_text()) if rc == 0 else {}
    ev = subprocess.run([sys.executable, "-m", "unirec_dist", "evaluate", "--checkpoint", str(final), "--k", "10",
                         "--out", str(work / "eval.json")], cwd=ROOT, env=ray_env(PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True)
    metrics = json.loads((work / "eval.json").read_text())["metrics"] if ev.returncode == 0 else {}
    return {"node": node, "rc": rc, "waited_without_node": waited, "seconds": t,
            "first_attempt_steps": sorted(first.values()), "restarted_steps": restarted,
            "final_step": manifest.get("step"), "evaluate_rc": ev.returncode,
            "NDCG@10": metrics.get("NDCG@10")}


def arm_exhausted(nodes, node, dataset, work, faults) -> dict:
    out, log = work / "exhausted" / "run", work / "exhausted.log"
    out.parent.mkdir(parents=True)
    (faults / "stalled").unlink(missing_ok=True)      # left by the recover arm when it ran first
    (faults / "trace.txt").unlink(missing_ok=True)
    cmd = pretrain_cmd(dataset, out, nodes.gcs, "distributed.max_failures=0")
    t: dict[str, float] = {}
    t0 = time.monotonic()
    with open(log, "wb") as f, open(work / "exhausted.err", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ray_env(PYTHONPATH=str(ROOT)), stdout=f, stderr=err)
    first = stall_and_kill(nodes, node, proc, faults, log, t, t0)
    rc = proc.wait(timeout=900)
    t["ended"] = time.monotonic() - t0
    lines = (work / "exhausted.err").read_text().strip().splitlines()
    node = nodes.add_node(num_cpus=1, name="node-rerun")
    t1 = time.monotonic()
    rerun = subprocess.run([*cmd[:4], "--resume", *cmd[4:]], cwd=ROOT, env=ray_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    runs = trace_runs(faults / "trace.txt")
    manifest = json.loads((out / "checkpoints" / "final" / "manifest.json").read_text()) if rerun.returncode == 0 else {}
    return {"node": node, "rc": rc, "error_line": lines[-1] if lines else "", "seconds": t,
            "rerun_rc": rerun.returncode, "rerun_s": time.monotonic() - t1,
            "rerun_steps": sorted(v for w, v in runs.items() if w not in first),
            "rerun_final_step": manifest.get("step")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--down-s", type=float, default=10.0, help="seconds the cluster stays one node short")
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--arms", default="recover,exhausted", help="which arms to run, in this order")
    args = ap.parse_args()
    arms = set(args.arms.split(","))
    if not arms or not arms <= {"recover", "exhausted"}:
        ap.error(f"--arms: recover and/or exhausted, got {args.arms!r}")
    from tests.synthetic import prepared_dataset

    work = Path(tempfile.mkdtemp(prefix="unirec-node-loss-"))
    dataset = prepared_dataset(work / "ds", n_users=args.users)
    faults = work / "faults"
    faults.mkdir()
    env = ray_env(PYTHONPATH=str(ROOT), UNIREC_FAULT="train.step-3", UNIREC_FAULT_ACTION="hang",
                  UNIREC_FAULT_ONCE=str(faults / "stalled"), UNIREC_FAULT_TRACE=str(faults / "trace.txt"))
    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="urn-", dir="/tmp")), env)
    try:
        t0 = time.monotonic()
        nodes.start_head(num_cpus=1)
        node = nodes.add_node(num_cpus=1)
        print(f"cluster: head + 1 node up in {time.monotonic() - t0:.1f} s")
        ok = True
        if "recover" in arms:
            rec = arm_recover(nodes, node, dataset, work, faults, args.down_s)
            print("recover:", json.dumps({k: v for k, v in rec.items() if k != "node"}, default=lambda x: round(x, 1)))
            node = rec["node"]
            ok = (rec["rc"] == 0 and rec["waited_without_node"] and rec["final_step"] == 8 and rec["evaluate_rc"] == 0
                  and rec["restarted_steps"] == [[4, 5, 6, 7, 8]] * 2)
        if "exhausted" in arms:
            exh = arm_exhausted(nodes, node, dataset, work, faults)
            print("exhausted:", json.dumps({k: v for k, v in exh.items() if k != "node"}, default=lambda x: round(x, 1)))
            ok = ok and (exh["rc"] == 2 and "last good checkpoint" in exh["error_line"]
                         and "--resume" in exh["error_line"] and exh["rerun_rc"] == 0
                         and exh["rerun_steps"] == [[4, 5, 6, 7, 8]] * 2 and exh["rerun_final_step"] == 8)
    finally:
        nodes.stop()
    print("checks:", "all passed" if ok else "FAILED", f"(work dir {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
