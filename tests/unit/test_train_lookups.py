"""The train pipeline's batches (training/data.py `Lookups`) and the step that reads them
(tasks/base.py `forward_sequences(looked=...)`), in one process without sharding: every id the
step needs is in the batch, the draws are reproducible per (seed, epoch, batch, rank) and survive
a resume's skip, and the looked-up rows give the same vectors as the tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unirec_dist.training.data import Lookups, SequenceBatches, TrainSequences


def sequences(n: int = 40, seed: int = 0) -> TrainSequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 15, n)
    return TrainSequences(users=np.arange(1, n + 1), values=rng.integers(1, 30, lengths.sum()),
                          offsets=np.concatenate([[0], np.cumsum(lengths)]))


def loader(group: int = 1, users: bool = False, **kw) -> SequenceBatches:
    return SequenceBatches(sequences(), 8, 10, seed=5, lookups=Lookups(16, group, 30, users=users), **kw)


@pytest.mark.parametrize("group", [1, 4])
def test_a_batch_carries_every_id_its_step_looks_up(group):
    for b in loader(group, users=True):
        seq = b.seq["item"]
        values, lengths = seq.values(), seq.lengths()
        positions = int((lengths - 1).clamp(min=0).sum())
        rows = positions if group == 1 else -(-positions // group)
        assert b.negatives is not None and tuple(b.negatives.shape) == (rows, 16)
        assert int(b.negatives.min()) >= 1 and int(b.negatives.max()) < 30     # never the padding row
        lk = b.item_lookup
        assert lk is not None and lk.keys() == ["item"]
        T = values.numel()
        assert torch.equal(lk.values()[:T], values)                     # the sequences, in order
        assert torch.equal(lk.values()[T:], torch.unique(b.negatives))  # then each negative once
        assert lk.lengths().tolist() == lengths.tolist() + [lk.values().numel() - T]
        assert b.user_lookup is not None and torch.equal(b.user_lookup.values(), b.users)


def test_draws_repeat_per_epoch_and_batch_and_survive_a_resume_skip():
    a = loader()
    a.set_epoch(3)
    first = [b.negatives for b in a]
    a.set_epoch(3)
    again = [b.negatives for b in a]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    a.set_epoch(4)
    assert [x[0].tolist() for x in first] != [y.negatives[0].tolist() for y in a]   # a new epoch, new draws
    resumed = loader()
    resumed.set_epoch(3)
    resumed.skip(2)
    assert all(torch.equal(x, y.negatives) for x, y in zip(first[2:], resumed, strict=True))
    other_rank = SequenceBatches(sequences(), 8, 10, seed=5, rank=1, world_size=2, lookups=Lookups(16, 1, 30, False))
    mine = SequenceBatches(sequences(), 8, 10, seed=5, rank=0, world_size=2, lookups=Lookups(16, 1, 30, False))
    assert not torch.equal(next(iter(other_rank)).negatives[:1], next(iter(mine)).negatives[:1])


def test_without_lookups_batches_carry_none():
    b = next(iter(SequenceBatches(sequences(), 8, 10)))
    assert b.item_lookup is None and b.user_lookup is None and b.negatives is None


def test_looked_up_rows_give_the_tables_vectors(tmp_path):
    """A model with content features: the step's vectors from `model(batch)` (what the pipeline
    hands it) equal the tables' own at every real position, and for the negatives."""
    from tests.unit.test_models import make_prepared
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.tasks.base import forward_sequences
    from unirec_dist.training.train import setup_training

    ds = make_prepared(tmp_path / "prep")
    cfg = load_pretrain_config("configs/pretrain/debug.yaml", [
        f"data.path={ds}", "distributed.train_pipeline=sparse_dist", "model.encoder.dropout=0.0", "data.max_len=10"])
    st = setup_training(cfg, train_pipeline=True)
    model = st.module.model.eval()
    assert model.embedding.has_content
    batch = next(iter(st.batches.batches))
    with torch.no_grad():
        looked = model(batch)
        a = forward_sequences(model, batch, looked=looked)
        b = forward_sequences(model, batch)
    real = a.ids > 0
    torch.testing.assert_close(a.items[real], b.items[real])
    torch.testing.assert_close(a.states[a.valid], b.states[b.valid])
    assert a.lookup is not None and torch.equal(a.negatives, batch.negatives)
    negs = batch.negatives.reshape(-1)
    torch.testing.assert_close(a.lookup(negs), model.embedding.item_vectors(negs))
    pos = a.ids[:, 1:][a.valid]
    torch.testing.assert_close(a.lookup(pos), model.embedding.item_vectors(pos))
    cat = a.lookup.catalogue()
    assert cat.shape == (model.embedding.n_items, a.items.shape[-1])
    torch.testing.assert_close(cat[negs], model.embedding.item_vectors(negs))


def test_looked_up_user_vectors_give_the_tables_states(tmp_path):
    """Matrix factorisation reads user vectors: `model(batch)` looks the user table up too, and
    the states from those rows equal the ones from the table."""
    from tests.unit.test_models import make_prepared
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.tasks.base import forward_sequences
    from unirec_dist.training.train import setup_training

    ds = make_prepared(tmp_path / "prep")
    cfg = load_pretrain_config("configs/pretrain/debug.yaml", [
        f"data.path={ds}", "distributed.train_pipeline=sparse_dist", "model.encoder={kind: mf}",
        "model.embedding.item_features=[]", "data.max_len=10"])
    st = setup_training(cfg, train_pipeline=True)
    model = st.module.model.eval()
    batch = next(iter(st.batches.batches))
    with torch.no_grad():
        looked = model(batch)
        a = forward_sequences(model, batch, looked=looked)
        b = forward_sequences(model, batch)
    assert set(looked) == {"item", "user"}
    torch.testing.assert_close(looked["user"].values()[:, :model.embedding.dim], model.embedding.user_vectors(batch.users))
    torch.testing.assert_close(a.states[a.valid], b.states[b.valid])


def test_the_large_catalogue_loss_from_looked_up_rows_equals_the_whole_catalogue_one(tmp_path, monkeypatch):
    """A pipelined step's retrieval loss indexes a small catalogue whole and asks a large one row
    by row (LookedItems); both give the same loss for the same negatives."""
    import unirec_dist.tasks.retrieval as retrieval
    from tests.unit.test_models import make_prepared
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.train import setup_training

    ds = make_prepared(tmp_path / "prep")
    cfg = load_pretrain_config("configs/pretrain/debug.yaml", [
        f"data.path={ds}", "distributed.train_pipeline=sparse_dist", "model.encoder.dropout=0.0", "data.max_len=10"])
    st = setup_training(cfg, train_pipeline=True)
    model, task = st.module.model.eval(), st.module.task
    batch = next(iter(st.batches.batches))
    with torch.no_grad():
        torch.manual_seed(0)
        whole, _ = task.loss(model, batch, looked=model(batch))
        monkeypatch.setattr(retrieval, "WHOLE_CATALOGUE_MAX_ROWS", 0)
        torch.manual_seed(0)
        by_row, _ = task.loss(model, batch, looked=model(batch))
    torch.testing.assert_close(whole, by_row)


@pytest.mark.parametrize("dense_map", [True, False])
def test_looked_items_answer_only_what_was_looked_up(monkeypatch, dense_map):
    from unirec_dist.tasks.base import LookedItems

    if not dense_map:   # a catalogue above the dense map's size: binary search
        monkeypatch.setattr(LookedItems, "DENSE_MAP_MAX_ROWS", 0)
    vecs = torch.arange(8.0).view(4, 2)
    looked = LookedItems(torch.tensor([1, 3, 4, 8]), vecs, n_rows=10)
    torch.testing.assert_close(looked(torch.tensor([8, 1, 1, 4])), vecs[[3, 0, 0, 2]])
    with pytest.raises(ValueError, match="not looked up"):
        looked(torch.tensor([3, 2]))
    cat = looked.catalogue()
    assert cat.shape == (10, 2) and torch.equal(cat[[1, 3, 4, 8]], vecs) and float(cat[[0, 2, 9]].abs().sum()) == 0


def test_the_loss_uses_the_negatives_it_is_given_and_checks_their_shape():
    from unirec_dist.models.heads.retrieval import sampled_softmax_loss

    torch.manual_seed(0)
    q, table = torch.randn(6, 4), torch.randn(20, 4)
    pos = torch.randint(1, 20, (6,))
    negs = torch.randint(1, 20, (6, 3))
    a = sampled_softmax_loss(q, pos, table, 0.1, 3, negatives=negs)
    b = sampled_softmax_loss(q, pos, lambda ids: table[ids], 0.1, 3, n_rows=20, negatives=negs)
    c = sampled_softmax_loss(q, pos, table, 0.1, 3, negatives=(negs % 19) + 1)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="negatives drawn for"):
        sampled_softmax_loss(q, pos, table, 0.1, 3, negatives=negs[:5])
    with pytest.raises(ValueError, match="negatives drawn for"):
        sampled_softmax_loss(q, pos, table, 0.1, 3, group=2, negatives=negs)
