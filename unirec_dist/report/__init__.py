"""`unirec report`: an HTML page with PNG figures for a train/pretrain/finetune run.

    write_report(run_dir, out=None, evals=None, recs_path=None, overwrite=False) -> index.html

Figures (each drawn when its inputs exist; otherwise the page says why it is missing):
  training.png      train loss and validation metrics per epoch, best epoch marked (logs/metrics.csv)
  vs_popularity.png metrics at every K for the model(s) beside the popularity baseline (eval.json)
  long_tail.png     items by training popularity against times recommended in the top-10, with
                    coverage and Gini (the run's dataset and a recs.parquet)
  ndcg_by_history.png  NDCG@10 by history-length bucket (eval.json from `evaluate --per-user`)
  workers.png       pretrain runs: throughput and memory per worker (pretrain.json)

Several eval files are merged (e.g. the model's and the popularity baseline's `unirec evaluate
--out` files). Defaults: out = RUN/report, evals = [RUN/eval.json], recs = RUN/recs.parquet, each when present. The
folder is written to a temp folder and renamed into place, so a failure leaves nothing behind.
"""
from __future__ import annotations

import html
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unirec_dist.report.inputs import (
    ReportError,
    check_recs_path,
    long_tail_inputs,
    open_evals,
    open_run,
    pretrain_stats,
)

log = logging.getLogger(__name__)

TOP_K = 10
__all__ = ["ReportError", "write_report"]


def _figure(name: str, title: str, caption: str) -> str:
    return (f'<figure><h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _skipped(title: str, why: str) -> str:
    return f'<section class="skipped"><h2>{html.escape(title)}</h2><p>Not drawn: {html.escape(why)}.</p></section>'


def _facts(run, evals) -> str:
    cfg = run.manifest.get("config") or {}
    ds = run.manifest.get("dataset") or {}
    rows = [
        ("run", str(run.path.resolve())),
        ("kind", run.kind),
        ("model", f"{(cfg.get('model') or {}).get('encoder', {}).get('kind', '?')}, "
                  f"dim {(cfg.get('model') or {}).get('embedding', {}).get('dim', '?')}"),
        ("dataset", f"{ds.get('name')} ({ds.get('path')}), vocab {str(ds.get('vocab_hash'))[:12]}"),
        ("checkpoint", f"step {run.manifest.get('step')}, world size {run.manifest.get('world_size')}"),
        ("epochs logged", str(len(run.epochs.epoch))),
    ]
    if evals is not None:
        rows.append(("evaluation", ", ".join(str(p.resolve()) for p in evals.paths)))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 10px; border-bottom: 1px solid #ddd; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption, .note, .skipped p {{ color: #555; font-size: 0.9em; }}
</style></head>
<body><h1>{title}</h1>
{facts}
{notes}
{body}
<p class="note">Written by unirec_dist {version} on {when}.</p>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, evals: list[str | Path] | None = None,
                 recs_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the report folder for `run_dir`; returns its index.html. Inputs are read and checked
    before the folder is created; a `ReportError` names the first problem."""
    from unirec_dist import __version__
    from unirec_dist.report import figures
    from unirec_dist.utils.atomic import atomic_dir, check_output_dir

    run_path = Path(run_dir)
    out_path = Path(out) if out is not None else run_path / "report"
    check_output_dir(out_path, overwrite)
    run = open_run(run_path)
    if not evals and (run.path / "eval.json").is_file():
        evals = [run.path / "eval.json"]
    ev = open_evals(evals, run) if evals else None
    recs = check_recs_path(str(recs_path)) if recs_path is not None else (
        run.path / "recs.parquet" if (run.path / "recs.parquet").is_file() else None)
    tail = long_tail_inputs(run, recs, TOP_K)

    notes = list(ev.notes) if ev else []
    with atomic_dir(out_path, overwrite=overwrite) as tmp:
        body = [_figure("training.png", "Training",
                        figures.training_curves(run.epochs, run.monitor, tmp / "training.png"))]
        title = "Model beside the popularity baseline"
        if ev is None:
            body.append(_skipped(title, "no evaluation (pass --eval; `unirec evaluate --out` writes one)"))
        elif "popularity" not in ev.reports or len(ev.reports) < 2:
            body.append(_skipped(title, "the evaluation needs both a model and the popularity baseline "
                                        f"(has: {', '.join(ev.reports)}); pass one --eval file for each"))
        else:
            body.append(_figure("vs_popularity.png", title,
                                figures.model_vs_popularity(ev.reports, tmp / "vs_popularity.png")))
        title = "The long tail"
        if isinstance(tail, str):
            body.append(_skipped(title, tail))
        else:
            body.append(_figure("long_tail.png", title, figures.long_tail(*tail, TOP_K, tmp / "long_tail.png")))
        title = "NDCG@10 by history length"
        per_user: dict[str, Any] = {n: r["per_user"] for n, r in (ev.reports if ev else {}).items()
                                    if isinstance(r.get("per_user"), dict) and r["per_user"].get("NDCG@10")}
        if per_user:
            body.append(_figure("ndcg_by_history.png", title,
                                figures.ndcg_by_history(per_user, tmp / "ndcg_by_history.png")))
        else:
            body.append(_skipped(title, "no per-user results (`unirec evaluate --per-user --out eval.json`)"))
        if run.kind == "pretrain":
            title = "Pretraining workers"
            workers = pretrain_stats(run)
            if workers:
                body.append(_figure("workers.png", title, figures.pretrain_workers(
                    workers, run.summary.get("seconds"), tmp / "workers.png")))
            else:
                body.append(_skipped(title, "pretrain.json has no worker_stats"))
        page = PAGE.format(
            title=html.escape(f"unirec report: {run.path.name} ({run.kind})"),
            facts=_facts(run, ev),
            notes="".join(f'<p class="note">{html.escape(n)}</p>' for n in notes),
            body="\n".join(body), version=html.escape(__version__),
            when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
        (tmp / "index.html").write_text(page)
    log.info("report written to %s", out_path)
    return out_path / "index.html"
