"""`unirec submit [--address URL] [--no-wait] [--working-dir DIR] [--env K=V] -- pretrain --config ...`.

Submits a unirec command as a Ray job through the Jobs API (the dashboard, http://HEAD:8265),
prints the job id, and by default follows its output until it ends: exit 0 when the job
SUCCEEDED, 1 when it FAILED or was STOPPED (repeating the job's last `error:` line on stderr, e.g. the
job Python's missing stack, see launch/pretrain_job.py). Address: --address, else
RAY_API_SERVER_ADDRESS / RAY_ADDRESS, else http://127.0.0.1:8265. The inner command's config (with
its overrides) and, where this machine sees it, its dataset are loaded and validated before
anything is uploaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a unirec command (e.g. pretrain) as a job on a Ray cluster",
                       description="Submit `unirec COMMAND ...` (after --) to a Ray cluster's Jobs API.")
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, "
                        "else http://127.0.0.1:8265)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--working-dir", default=None,
                   help="directory shipped to the cluster as the job's working_dir (default: this source tree)")
    p.add_argument("--no-upload", action="store_true",
                   help="ship no working_dir: run the package installed in the cluster image")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--pip", action="append", default=[], metavar="PKG",
                   help="extra package for the job's virtualenv, on top of the cluster image (repeatable)")
    p.add_argument("--requirements", default=None, metavar="FILE",
                   help="extra packages from a requirements file (not the torch/FBGEMM/torchrec stack: bake that into the image)")
    p.add_argument("--job-id", default=None, help="submission id to use (default: Ray picks one)")
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the unirec command to run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch import submit as js

    inner = list(args.inner)
    if inner and inner[0] == "--":
        inner = inner[1:]
    if not inner:
        raise js.JobsError("nothing to submit: give a unirec command after --, e.g. `unirec submit -- pretrain --config ...`")
    js.entrypoint_for(inner)   # validate before touching the network
    if args.working_dir and args.no_upload:
        raise js.JobsError("--working-dir and --no-upload exclude each other")
    renv = js.build_runtime_env(None if args.no_upload else (args.working_dir or "auto"),
                                env=js.parse_env(args.env), pip=args.pip, requirements=args.requirements)
    wd = renv.get("working_dir")
    js.check_inner_config(inner, Path(wd) if wd else None)
    client = js.connect(args.address)
    job_id = js.submit(client, inner, runtime_env=renv, submission_id=args.job_id)
    print(f"job: {job_id}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = js.follow(client, job_id, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    except KeyboardInterrupt:
        print(f"\nthe job keeps running; stop it with: unirec jobs stop {job_id}", file=sys.stderr)
        raise
    print(f"job {job_id}: {status}", flush=True)
    if status == "SUCCEEDED":
        return 0
    line = last_error_line(client, job_id)
    if line:
        print(line, file=sys.stderr)
    return 1


def last_error_line(client, job_id: str) -> str | None:
    """The job's last `error: ...` line (a user mistake or a missing stack), if its log has one."""
    try:
        logs = client.get_job_logs(job_id)
    except Exception:   # noqa: BLE001 - the job already ended; its status line has been printed
        return None
    lines = [ln for ln in logs.splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else None
