"""What a report reads, checked before any figure is drawn: the run folder, its optional
eval.json, and the dataset and top-10 lists behind the long-tail figure.

Holds the run's logs and summaries (small), the eval reports, and for the long tail the train
split's per-item counts and the recommendation table (one row per user and rank).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from unirec_dist.errors import DataError, UnirecError

log = logging.getLogger(__name__)


class ReportError(UnirecError):
    """The report's inputs are not what it needs (not a run, no epochs, another dataset)."""


@dataclass
class Epochs:
    """Per-epoch values from the run's Lightning CSV log (logs/metrics.csv).

    epoch: (E,) epoch numbers; loss: (E,) train loss per epoch (NaN where not logged);
    val: validation metric name -> (E,) values (NaN where not logged).
    """

    epoch: np.ndarray
    loss: np.ndarray
    val: dict[str, np.ndarray]


@dataclass
class Run:
    path: Path
    kind: str                           # train, pretrain or finetune (the checkpoint manifest's kind)
    manifest: dict[str, Any]            # the newest checkpoint's manifest
    epochs: Epochs
    summary: dict[str, Any]             # metrics.json (train, finetune) or pretrain.json (pretrain)
    monitor: tuple[str, str] = ("NDCG@10", "max")   # the validation metric that picks the best epoch

    @property
    def vocab_hash(self) -> str | None:
        return (self.manifest.get("dataset") or {}).get("vocab_hash")

    @property
    def dataset_path(self) -> str | None:
        return (self.manifest.get("dataset") or {}).get("path")


@dataclass
class Evals:
    """The eval reports by name ("popularity" for the baseline), and notes for the page."""

    paths: list[Path]
    reports: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: cannot read the {what} ({e})") from None


def read_epochs(csv_path: Path) -> Epochs | None:
    """Per-epoch train loss and validation metrics of a Lightning CSV log; None when it holds no
    per-epoch row (no train/loss_epoch and no val/ value logged)."""
    import pyarrow.csv as pcsv

    if not csv_path.is_file():
        return None
    try:
        table = pcsv.read_csv(csv_path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ReportError(f"{csv_path}: not a readable CSV log ({e})") from None
    if "epoch" not in table.column_names or table.num_rows == 0:
        return None
    epoch_col = table["epoch"].to_numpy(zero_copy_only=False)
    epochs = np.unique(epoch_col[~np.isnan(epoch_col.astype(float))]).astype(int)

    def per_epoch(name: str) -> np.ndarray:
        values = table[name].to_numpy(zero_copy_only=False).astype(float)
        out = np.full(len(epochs), np.nan)
        for i, e in enumerate(epochs):
            v = values[(epoch_col == e) & ~np.isnan(values)]
            if v.size:
                out[i] = v[-1]      # the epoch's last logged value
        return out

    loss = per_epoch("train/loss_epoch") if "train/loss_epoch" in table.column_names else np.full(len(epochs), np.nan)
    val = {c.split("/", 1)[1]: per_epoch(c) for c in table.column_names
           if c.startswith("val/") and c != "val/fit_seconds"}
    val = {k: v for k, v in val.items() if not np.all(np.isnan(v))}
    if np.all(np.isnan(loss)) and not val:
        return None
    return Epochs(epochs, loss, val)


def open_run(path: str | Path) -> Run:
    """The run in `path` (a train/pretrain/finetune trainer.out_dir), or one ReportError."""
    from unirec_dist.checkpoint.dcp import read_manifest

    run = Path(path)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder")
    try:
        manifest = read_manifest(run)
    except UnirecError as e:
        raise ReportError(f"{run} is not a train/pretrain/finetune run: {e}") from None
    kind = str(manifest.get("kind", "train"))
    summary_file = run / ("pretrain.json" if kind == "pretrain" else "metrics.json")
    summary = _read_json(summary_file, "run summary") if summary_file.is_file() else {}
    epochs = read_epochs(run / "logs" / "metrics.csv")
    if epochs is None:
        raise ReportError(f"{run}: no epoch was logged ({run / 'logs' / 'metrics.csv'} is missing or has no "
                          "per-epoch row; trainer.loggers must include csv)")
    monitor = ("NDCG@10", "max")
    if summary.get("monitor"):   # fine-tuning names its monitored metric (RMSE is minimised)
        monitor = (summary["monitor"], "min" if summary["monitor"] in ("RMSE", "MAE", "logloss") else "max")
    return Run(run, kind, manifest, epochs, summary, monitor)


def _report_name(report: dict[str, Any]) -> str:
    model = report.get("model") or {}
    return str(model.get("baseline") or "model")


def open_evals(paths: list[str | Path], run: Run) -> Evals:
    """Evaluation JSON files as written by `unirec evaluate --out` (one report each) or
    `unirec demo` (reports by name), merged; refused when one records another dataset's vocab
    hash than the run's checkpoint."""
    evals = Evals([Path(p) for p in paths], {})
    for path in evals.paths:
        if not path.is_file():
            raise ReportError(f"evaluation {path}: no such file")
        data = _read_json(path, "evaluation")
        if not isinstance(data, dict):
            raise ReportError(f"{path}: expected a JSON object of evaluation reports")
        reports = {_report_name(data): data} if "metrics" in data else data
        for name, rep in reports.items():
            if not isinstance(rep, dict) or not isinstance(rep.get("metrics"), dict):
                raise ReportError(f"{path}: entry {name!r} is not an evaluation report (no metrics)")
            got = (rep.get("dataset") or {}).get("vocab_hash")
            if got is None:
                evals.notes.append(f"{path.name} ({name}) records no dataset vocab hash: not checked against the run.")
            elif run.vocab_hash and got != run.vocab_hash:
                raise ReportError(f"{path} evaluates dataset vocab {got[:12]}, but the run {run.path} was trained on "
                                  f"{run.vocab_hash[:12]}: it is from another dataset")
            evals.reports[name if name not in evals.reports else f"{name} ({path.stem})"] = rep
    return evals


def long_tail_inputs(run: Run, recs_path: Path | None, k: int = 10) -> tuple[np.ndarray, np.ndarray] | str:
    """(train counts (N,), times recommended in the top-k (N,)) by item index 1..N, or a note
    saying why the long-tail figure is skipped."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.metrics.evaluate import popularity

    if recs_path is None or not recs_path.is_file():
        return "no recommendation lists (recs.parquet; `unirec recommend --out` writes one; pass --recs)"
    ds_path = run.dataset_path
    if not ds_path or not Path(ds_path).is_dir():
        return f"the run's dataset ({ds_path}) is not on this machine"
    try:
        ds = PreparedDataset.open(ds_path)
    except UnirecError as e:
        return f"the run's dataset cannot be opened ({e})"
    if run.vocab_hash and ds.vocab_hash != run.vocab_hash:
        return f"the dataset at {ds_path} has changed since the run (vocab hash differs)"
    try:
        recs = pq.read_table(recs_path, columns=["rank", "item"])
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise ReportError(f"{recs_path}: not a recommendation table with rank and item columns ({e})") from None
    recs = recs.filter(pc.less_equal(recs["rank"], k))
    vocab = ds.vocab("item")
    index = pc.index_in(recs["item"].cast(pa.string()), value_set=vocab["raw"].cast(pa.string()))
    if index.null_count:
        raise ReportError(f"recommendation table {recs_path}: {index.null_count} recommended items are not in the run's dataset "
                          f"{ds_path}: the lists are from another dataset")
    ids = vocab["index"].to_numpy()[index.to_numpy()].astype(np.int64)
    n = int(ds.n_items)
    counts = popularity(ds).item_embeddings().squeeze(1).numpy()[1:]
    recommended = np.bincount(ids, minlength=n + 1)[1:]
    return counts, recommended


def pretrain_stats(run: Run) -> list[dict[str, Any]]:
    """pretrain.json's per-worker figures (rank, rss_mib, hwm_mib, positions, train_s, ...)."""
    return [w for w in run.summary.get("worker_stats") or [] if isinstance(w, dict)]


def check_recs_path(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise DataError(f"recommendation table {p}: no such file")
    return p
