"""`unirec jobs list | status ID | logs ID [--follow] | stop ID [--wait]  [--address URL]`: the
jobs on a Ray cluster (through its Jobs API, the dashboard at http://HEAD:8265)."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list, inspect, follow and stop jobs on a Ray cluster")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=None,
                        help="Ray dashboard URL (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    jsub.add_parser("list", parents=[common], help="every job on the cluster, oldest first").set_defaults(func=run_list)
    s = jsub.add_parser("status", parents=[common], help="a job's status and message")
    s.add_argument("job_id")
    s.set_defaults(func=run_status)
    lg = jsub.add_parser("logs", parents=[common], help="a job's output")
    lg.add_argument("job_id")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    lg.set_defaults(func=run_logs)
    st = jsub.add_parser("stop", parents=[common], help="stop a running job")
    st.add_argument("job_id")
    st.add_argument("--wait", action="store_true", help="wait (up to 60 s) until the job has stopped")
    st.set_defaults(func=run_stop)


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def run_list(args: argparse.Namespace) -> int:
    from launch import submit as js

    client = js.connect(args.address)
    jobs = js.list_jobs(client)
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'JOB ID':<30} {'STATUS':<10} {'STARTED':<19}  ENTRYPOINT")
    for j in jobs:
        jid = j.submission_id or j.job_id or "-"
        entry = j.entrypoint if len(j.entrypoint) <= 80 else j.entrypoint[:77] + "..."
        print(f"{jid:<30} {js._status_str(j):<10} {_time(j.start_time):<19}  {entry}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from launch import submit as js

    d = js.info(js.connect(args.address), args.job_id)
    print(f"{args.job_id}: {js._status_str(d)}" + (f" ({d.message})" if d.message else ""))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from launch import submit as js

    client = js.connect(args.address)
    if args.follow:
        status = js.follow(client, args.job_id, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        print(f"job {args.job_id}: {status}")
        return 0
    sys.stdout.write(js.logs(client, args.job_id))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from launch import submit as js

    client = js.connect(args.address)
    running = js.stop(client, args.job_id)
    if not running:
        print(f"{args.job_id}: not running ({js.status(client, args.job_id)})")
        return 0
    if args.wait:
        print(f"{args.job_id}: {js.wait(client, args.job_id, timeout_s=60)}")
    else:
        print(f"{args.job_id}: stop requested")
    return 0
