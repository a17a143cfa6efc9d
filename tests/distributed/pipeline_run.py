"""2 gloo processes training the real model (synthetic dataset, the debug config) through
TorchRecStrategy, with TorchRec's TrainPipelineSparseDist (`PipelinedRecModule`), with the plain
Lightning loop over the same batches (`PlainLookupModule`: one `model(batch)` lookup, the same
loss, no pipeline), or (`pipelined=None`) the plain RecModule on plain batches, the default
pretraining step. Rank 0 saves the per-step losses and the final dense weights.
`whole_catalogue_max_rows` overrides tasks/retrieval.py's WHOLE_CATALOGUE_MAX_ROWS in the
workers (0: the large-catalogue path on a small dataset)."""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch


def make_plain_module_class():
    from unirec_dist.training.module import RecModule

    class PlainLookupModule(RecModule):
        """The reference: the pipelined step's computation, run by Lightning's own loop."""

        def training_step(self, batch, batch_idx):
            from unirec_dist.training.strategy import common_pad_width

            common_pad_width(batch)   # (the strategy's training_step did it already; idempotent)
            loss, _ = self.task.loss(self.model, batch, looked=self.model(batch))
            self.log("train/loss", loss, on_step=True, batch_size=len(batch))
            return loss

    return PlainLookupModule


class LossRecorder:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def callback(self):
        from lightning.pytorch.callbacks import Callback

        rec = self

        class _CB(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                rec.losses.append(float(loss))

        return _CB()


def worker(rank: int, world: int, port: int, cfg_dict: dict[str, Any], pipelined: bool | None, max_steps: int,
           out: str, whole_catalogue_max_rows: int | None = None) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    import lightning.pytorch as pl
    import torchrec  # noqa: F401

    from unirec_dist.config.distributed import PretrainConfig
    from unirec_dist.config.loader import from_dict
    from unirec_dist.training.strategy import ShardingOptions, TorchRecStrategy
    from unirec_dist.training.train import setup_training

    if whole_catalogue_max_rows is not None:
        import unirec_dist.tasks.retrieval as retrieval

        retrieval.WHOLE_CATALOGUE_MAX_ROWS = whole_catalogue_max_rows
    torch.set_num_threads(1)
    cfg = from_dict(PretrainConfig, cfg_dict, where="test config")
    pl.seed_everything(cfg.trainer.seed, verbose=False)
    st = setup_training(cfg, rank=rank, world_size=world, table_device="meta", train_pipeline=pipelined is not None)
    module, loader = st.module, st.batches
    if pipelined is False:
        cls = make_plain_module_class()
        module = cls(cfg, module.model, module.task, None, n_items=module.n_items)
        loader = loader.batches     # the batches themselves, not the pipeline's step tickets
    rec = LossRecorder()
    sharding = ShardingOptions(constraints=dict(cfg.distributed.sharding), table_optimizer="adagrad", table_lr=0.05,
                               init_seed=cfg.trainer.seed)
    trainer = pl.Trainer(accelerator="cpu", devices=world, num_nodes=1,
                         strategy=TorchRecStrategy(sharding=sharding, manifest={"kind": "test"}),
                         max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[rec.callback()])
    trainer.fit(module, train_dataloaders=loader)
    dense = {n: p.detach().clone() for n, p in module.model.named_parameters()
             if "embedding.item_ec" not in n and "embedding.user_ec" not in n and "content_ebc" not in n}
    if rank == 0:
        torch.save({"losses": rec.losses, "dense": dense, "step": trainer.global_step,
                    "pipelined": getattr(module, "pipelined", None),
                    "plan": trainer.strategy.plan_summary}, out)


def spawn(cfg_dict: dict[str, Any], pipelined: bool | None, max_steps: int, out: str, world: int = 2,
          whole_catalogue_max_rows: int | None = None) -> dict[str, Any]:
    import torch.multiprocessing as mp

    from tests.distributed.toy import free_port

    mp.spawn(worker, args=(world, free_port(), cfg_dict, pipelined, max_steps, out, whole_catalogue_max_rows),
             nprocs=world, join=True)
    return torch.load(out, weights_only=False)
