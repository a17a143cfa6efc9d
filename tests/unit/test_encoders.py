"""Encoders as plug-ins: the registry, each encoder's own config section in the strict loader,
and, for every registered encoder, training lowers the loss and a checkpoint round-trips."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.unit.test_models import TINY, make_prepared
from unirec_dist.config.loader import from_dict, load_config, to_dict
from unirec_dist.config.train import TrainConfig
from unirec_dist.errors import ConfigError
from unirec_dist.models.encoders.base import EncoderConfig, SequenceEncoder
from unirec_dist.models.encoders.registry import ENCODERS

REPO = Path(__file__).resolve().parents[2]
DEBUG = REPO / "configs/pretrain/debug.yaml"


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("enc_ds") / "prep")


def _cfg(ds: Path, encoder: dict, **task) -> TrainConfig:
    return from_dict(TrainConfig, {"data": {"path": str(ds), "max_len": 10},
                                   "model": {"embedding": {"dim": 8, "item_features": []}, "encoder": encoder},
                                   "task": {"retrieval": {"num_negatives": 8}, **task}})


# -- registry and config sections ------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_registry_entry_is_consistent(kind):
    entry = ENCODERS[kind]
    assert issubclass(entry.config, EncoderConfig) and issubclass(entry.encoder, SequenceEncoder)
    assert entry.config().kind == kind          # the name in YAML is the one registered
    assert list(entry.config.__dataclass_fields__)[0] == "kind"


def test_unknown_encoder_is_one_line_listing_the_registered(ds):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, DEBUG, [f"data.path={ds}", "model.encoder={kind: gru4req}"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.encoder.kind: unknown encoder 'gru4req' (did you mean 'gru4rec'?)" in msg
    assert msg.endswith("registered: " + ", ".join(sorted(ENCODERS)))


def test_wrong_key_in_an_encoder_section_suggests_its_own_keys(ds):
    with pytest.raises(ConfigError, match=r"model\.encoder\.hiden_size: unknown key "
                                          r"\(did you mean 'model\.encoder\.hidden_size'\?\); "
                                          r"valid keys here: dropout, hidden_size, kind, num_layers$"):
        load_config(TrainConfig, DEBUG, [f"data.path={ds}", "model.encoder={kind: gru4rec, hiden_size: 8}"])
    # a key of another encoder is not valid here (debug.yaml's SASRec ffn_dim under kind hstu)
    with pytest.raises(ConfigError, match=r"model\.encoder\.ffn_dim: unknown key; valid keys here: "
                                          r"attn_block, attn_dropout, dqk, dropout, dv, kind, num_blocks, num_heads, time_bias, "
                                          r"time_buckets$"):
        load_config(TrainConfig, DEBUG, [f"data.path={ds}", "model.encoder.kind=hstu"])
    with pytest.raises(ConfigError, match=r"model\.encoder\.hidden_size: must be >= 1, got 0"):
        load_config(TrainConfig, DEBUG, [f"data.path={ds}", "model.encoder={kind: gru4rec, hidden_size: 0}"])


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_resolved_config_round_trips(ds, kind):
    cfg = _cfg(ds, TINY[kind])
    assert isinstance(cfg.model.encoder, ENCODERS[kind].config)
    data = to_dict(cfg)
    assert set(data["model"]["encoder"]) == set(ENCODERS[kind].config.__dataclass_fields__)
    assert from_dict(TrainConfig, json.loads(json.dumps(data))) == cfg


def test_resolved_config_of_the_flat_encoder_section_still_loads(ds):
    """Checkpoints written before each encoder had its own section list every encoder's keys."""
    legacy = {"kind": "hstu", "num_blocks": 3, "num_heads": 2, "ffn_dim": 50, "dqk": 6, "dv": 7,
              "dropout": 0.1, "attn_dropout": 0.0, "hidden": [128]}
    cfg = _cfg(ds, legacy)
    assert to_dict(cfg.model.encoder) == {"kind": "hstu", "num_blocks": 3, "num_heads": 2, "dqk": 6, "dv": 7,
                                          "dropout": 0.1, "attn_dropout": 0.0, "time_bias": False,
                                          "time_buckets": 128, "attn_block": 256}


def test_capabilities_not_names_decide(ds):
    with pytest.raises(ConfigError, match="task.kind: ctr needs a sequence encoder "
                                          r"\(sasrec, hstu, mean_pool, gru4rec\), not mf"):
        _cfg(ds, {"kind": "mf"}, kind="ctr")
    assert _cfg(ds, {"kind": "mf"}).model.user_table
    assert not _cfg(ds, TINY["gru4rec"]).model.user_table
    with pytest.raises(ConfigError, match="model.encoder.num_heads: must divide model.embedding.dim"):
        _cfg(ds, {"kind": "sasrec", "num_heads": 3})


# -- every registered encoder trains and round-trips through a checkpoint ----------------------
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_training_steps_lower_the_loss(ds, kind):
    from unirec_dist.models.factory import build_from_config
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    cfg = _cfg(ds, TINY[kind])
    man = json.loads((ds / "manifest.json").read_text())
    torch.manual_seed(0)
    model = build_from_config(cfg, man).train()
    task = build_task(cfg.task, man)
    batch = next(iter(SequenceBatches(TrainSequences.from_dir(ds), 16, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(10):
        torch.manual_seed(step % 3)        # the same negatives every few steps: compare like with like
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_checkpoint_round_trip(ds, tmp_path, kind):
    import pyarrow.parquet as pq

    from unirec_dist.checkpoint.dcp import save_checkpoint
    from unirec_dist.data.batch import make_seq_batch
    from unirec_dist.models.factory import build_from_config, dataset_section, load_retriever

    cfg = _cfg(ds, TINY[kind])
    man = json.loads((ds / "manifest.json").read_text())
    section = dataset_section(ds, man)
    torch.manual_seed(1)
    model = build_from_config(cfg, section).eval()
    model.embedding.set_item_features(pq.read_table(ds / "items.parquet"))
    ckpt = save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict()},
                           {"kind": "train", "config": to_dict(cfg), "dataset": section, "step": 0, "epoch": 0})
    torch.manual_seed(2)                    # a different init: the weights must come from the file
    again, _ = load_retriever(ckpt, ds)
    assert isinstance(again.encoder, ENCODERS[kind].encoder)
    batch = make_seq_batch(pa.array([1, 2, 3]), pa.array([[1, 2, 3], [7], []]), 10)
    with torch.no_grad():
        torch.testing.assert_close(again.query_embeddings(batch), model.query_embeddings(batch), rtol=0, atol=0)
        torch.testing.assert_close(again.item_embeddings(), model.item_embeddings(), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_fixed_max_len_is_true_of_the_module(kind):
    """Fine-tuning refuses a longer max_len only for encoders that declare fixed_max_len: those
    cannot read a longer history, the others can."""
    entry = ENCODERS[kind]
    enc = entry.encoder.from_config(entry.config(), 8, 4)
    x, lengths, users = torch.randn(2, 6, 8), torch.tensor([6, 3]), torch.randn(2, 8)
    if entry.encoder.fixed_max_len:
        with pytest.raises(ValueError, match="exceeds max_len 4"):
            enc(x, lengths, users)
    else:
        assert enc(x, lengths, users).shape == (2, 6, 8)
