"""Model family: embedding layer, encoders, heads, losses (expectations computed by hand)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from unirec_dist.config.loader import from_dict
from unirec_dist.config.train import EmbeddingSection, ModelSection, TaskSection
from unirec_dist.data.batch import make_seq_batch
from unirec_dist.models.encoders.registry import ENCODERS
from unirec_dist.models.encoders.sasrec import SASRecConfig

# a small section of every registered encoder, dropout off (a new encoder adds its line)
TINY = {
    "sasrec": {"kind": "sasrec", "num_blocks": 1, "num_heads": 2, "ffn_dim": 8, "dropout": 0.0},
    "hstu": {"kind": "hstu", "num_blocks": 1, "num_heads": 2, "dqk": 4, "dv": 4, "dropout": 0.0},
    "mean_pool": {"kind": "mean_pool", "dropout": 0.0},
    "mf": {"kind": "mf"},
    "gru4rec": {"kind": "gru4rec", "hidden_size": 12, "dropout": 0.0},
}
SEQUENCE_ENCODERS = sorted(k for k, e in ENCODERS.items() if e.encoder.reads_history)


def make_prepared(root: Path, n_users: int = 40, n_items: int = 30, seq_len: int = 12, seed: int = 0,
                  features: bool = True, ratings: bool = True, format_version: int = 1) -> Path:
    """A hand-made prepared dataset (data/format.py) whose sequences follow item -> item % N + 1,
    so a sequence model can learn them. Leave-one-out split."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    users, trains, valid_h, valid_t, test_h, test_t, rats, vrats = [], [], [], [], [], [], [], []
    for u in range(1, n_users + 1):
        start = int(rng.integers(1, n_items + 1))
        n = int(rng.integers(4, seq_len + 1))
        seq = [(start - 1 + k) % n_items + 1 for k in range(n)]
        r = [float(1 + (i % 5)) for i in seq]
        users.append(u)
        trains.append(seq[:-2])
        rats.append(r[:-2])
        valid_h.append(seq[:-2])
        valid_t.append([seq[-2]])
        vrats.append([r[-2]])
        test_h.append(seq[:-1])
        test_t.append([seq[-1]])
    i32 = pa.list_(pa.int32())
    cols = {"user": pa.array(users, pa.int32()), "items": pa.array(trains, i32),
            "timestamps": pa.array([[1000 + k for k in range(len(t))] for t in trains], pa.list_(pa.int64()))}
    if ratings:
        cols["ratings"] = pa.array(rats, pa.list_(pa.float32()))
    pq.write_table(pa.table(cols), root / "train.parquet")
    vcols = {"user": pa.array(users, pa.int32()), "history": pa.array(valid_h, i32), "targets": pa.array(valid_t, i32)}
    if ratings:
        vcols["target_ratings"] = pa.array(vrats, pa.list_(pa.float32()))
    pq.write_table(pa.table(vcols), root / "valid.parquet")
    pq.write_table(pa.table({"user": pa.array(users, pa.int32()), "history": pa.array(test_h, i32),
                             "targets": pa.array(test_t, i32)}), root / "test.parquet")
    items = {"item": pa.array(range(1, n_items + 1), pa.int32())}
    feats = []
    if features:
        items["genre"] = pa.array([[1 + i % 4, 1 + (i * 7) % 4] for i in range(n_items)], i32)
        items["title"] = pa.array([[1 + (i * 3) % 49, 1 + (i * 5) % 49, 1 + i % 49] for i in range(n_items)], i32)
        items["year"] = pa.array([1 + i % 6 for i in range(n_items)], pa.int32())
        items["vec"] = pa.array([[math.sin(i), math.cos(i), 0.5] for i in range(n_items)], pa.list_(pa.float32(), 3))
        feats = [
            {"name": "genre", "table": "items", "kind": "multi", "cardinality": 5, "max_len": 2},
            {"name": "title", "table": "items", "kind": "text", "cardinality": 50, "max_len": 4},
            {"name": "year", "table": "items", "kind": "categorical", "cardinality": 7},
            {"name": "vec", "table": "items", "kind": "dense", "dim": 3},
        ]
    pq.write_table(pa.table(items), root / "items.parquet")
    manifest = {
        "format_version": format_version, "name": "synthetic", "vocab_hash": f"hash-{n_users}-{n_items}-{seed}",
        "vocab_sizes": {"user": n_users + 1, "item": n_items + 1, **({"genre": 5, "year": 7} if features else {})},
        "features": feats, "split": {"protocol": "leave_one_out"}, "counts": {"final": int(n_users)},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _model(root: Path, kind: str = "sasrec", features=("*",), task: TaskSection | None = None, **enc):
    from unirec_dist.models.factory import build_model

    mcfg = from_dict(ModelSection, {"embedding": {"dim": 8, "item_features": list(features)},
                                    "encoder": {**TINY[kind], **enc}}, prefix="model")
    model = build_model(mcfg, _manifest(root), task, max_len=10)
    model.embedding.set_item_features(pq.read_table(root / "items.parquet"))
    return model


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("ds") / "prep")


def test_feature_tables_have_stable_names(ds):
    from unirec_dist.embeddings.features import FeatureSpec, content_table_configs, id_table_configs

    spec = FeatureSpec.from_manifest(_manifest(ds))
    ids = id_table_configs(spec, 8, user=True)
    assert ids["item"].name == "t_item" and ids["item"].num_embeddings == 31
    assert ids["user"].name == "t_user" and ids["user"].num_embeddings == 41
    bags = content_table_configs(spec.item_features(["*"]), 8)
    assert [t.name for t in bags] == ["t_genre", "t_title", "t_year"]
    assert [t.num_embeddings for t in bags] == [5, 50, 7]


def test_unknown_item_feature_is_a_config_error(ds):
    from unirec_dist.embeddings.features import FeatureSpec
    from unirec_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="'genres' is not an item feature.*genre"):
        FeatureSpec.from_manifest(_manifest(ds)).item_features(["genres"])


def test_item_vector_is_id_plus_content(ds):
    model = _model(ds)
    emb = model.embedding
    ids = torch.tensor([3, 7])
    got = emb.item_vectors(ids)
    # by hand: id row + mean of genre rows + mean of title rows + year row + W vec + b
    w = {t: emb.content_ebc.embedding_bags[f"t_{t}"].weight for t in ("genre", "title", "year")}
    want = []
    for i in ids.tolist():
        k = i - 1   # items.parquet row of item i
        v = emb.item_ec.embeddings["t_item"].weight[i].clone()
        v += w["genre"][[1 + k % 4, 1 + (k * 7) % 4]].mean(0)
        v += w["title"][[1 + (k * 3) % 49, 1 + (k * 5) % 49, 1 + k % 49]].mean(0)
        v += w["year"][1 + k % 6]
        v += emb.dense_proj["vec"](torch.tensor([math.sin(k), math.cos(k), 0.5]))
        want.append(v)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def test_content_only_items_differ_without_id(ds):
    from unirec_dist.models.factory import build_model

    mcfg = ModelSection(embedding=EmbeddingSection(dim=8, item_id=False))
    model = build_model(mcfg, _manifest(ds), max_len=10)
    model.embedding.set_item_features(pq.read_table(ds / "items.parquet"))
    E = model.item_embeddings()
    assert E.shape == (31, 8)
    assert torch.all(E[0] == 0)
    assert not torch.allclose(E[1], E[2])


def test_every_registered_encoder_is_tested():
    assert set(TINY) == set(ENCODERS)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoders_are_causal_and_retrievers(ds, kind):
    from unirec_dist.models.protocol import Retriever

    torch.manual_seed(0)
    model = _model(ds, kind).eval()
    assert isinstance(model, Retriever)
    x = torch.randn(2, 6, 8)
    lengths = torch.tensor([6, 4])
    users = torch.tensor([1, 2])
    h = model.encode(x, lengths, users)
    assert h.shape == (2, 6, 8)
    # changing a later item must not change earlier states (causality)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    h2 = model.encode(x2, lengths, users)
    torch.testing.assert_close(h[:, :4], h2[:, :4])
    assert torch.all(h[1, 4:] == 0)           # padding rows are zero
    batch = make_seq_batch(pa.array([1, 2]), pa.array([[1, 2, 3], [4, 5]]), 10)
    q = model.query_embeddings(batch)
    assert q.shape == (2, 8)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(2))
    assert model.item_embeddings().shape == (31, 8)


@pytest.mark.parametrize("kind,enc", [(k, {}) for k in SEQUENCE_ENCODERS] + [("sasrec", {"num_blocks": 0})])
def test_query_is_state_after_last_item(ds, kind, enc):
    """query_embeddings takes the encoder's last-state path (SASRec and HSTU run their last block
    for the last position only); it must equal the full causal pass's state at that position, for
    every length in the batch, and zeros for an empty history."""
    torch.manual_seed(0)
    model = _model(ds, kind, **enc).eval()
    with torch.no_grad():   # zero-initialised biases (HSTU's relative positions) would hide errors
        for p in model.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hist = [[1, 2, 3], [4, 5], [7], [3, 9, 11, 2, 8, 6, 1], []]
    batch = make_seq_batch(pa.array([1, 2, 3, 4, 5]), pa.array(hist), 10)
    q = model.query_embeddings(batch)
    assert q.shape == (5, 8)
    items, lengths = model.embed_sequences(batch.seq)
    h = model.encode(items, lengths.clamp(min=1))
    for b, row in enumerate(hist[:-1]):
        torch.testing.assert_close(q[b], torch.nn.functional.normalize(h[b, len(row) - 1], dim=0))
    assert torch.all(q[-1] == 0)


def test_builds_on_meta_device(ds):
    from unirec_dist.models.factory import build_model

    m = build_model(ModelSection(), _manifest(ds), TaskSection(kind="multi", weights={"retrieval": 1, "rating": 1}),
                    max_len=50, device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    assert "rating" in m.heads


def test_sampled_softmax_by_hand():
    from unirec_dist.models.heads.retrieval import full_softmax_loss, sampled_softmax_loss

    q = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    neg = torch.randint(1, 4, (1, 3), generator=torch.Generator().manual_seed(0))
    loss = sampled_softmax_loss(q, torch.tensor([1]), items, 0.5, 3, generator=g)
    logits = [2.0] + [(-1e4 if n == 1 else [None, 2.0, 0.0, -2.0][n]) for n in neg[0].tolist()]
    want = -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert abs(loss.item() - want) < 1e-5
    full = full_softmax_loss(q, torch.tensor([1]), items, 0.5)
    want_full = -2.0 + math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-2.0))
    assert abs(full.item() - want_full) < 1e-5


def test_in_batch_negatives_use_logq():
    from unirec_dist.models.heads.retrieval import sampled_softmax_loss

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    logp = torch.log(torch.tensor([1.0, 0.25, 0.75]))
    g = torch.Generator().manual_seed(1)
    pick = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(1))
    loss = sampled_softmax_loss(q, torch.tensor([1, 2]), items, 1.0, 0, in_batch=2, log_popularity=logp, generator=g)
    ib = torch.tensor([1, 2])[pick]
    total = 0.0
    for p, pos in enumerate([1, 2]):
        vals = [float(q[p] @ items[pos])]
        for j in ib.tolist():
            vals.append(-1e4 if j == pos else float(q[p] @ items[j]) - math.log(2) - float(logp[j]))
        total += -vals[0] + math.log(sum(math.exp(v) for v in vals))
    assert abs(loss.item() - total / 2) < 1e-5


def test_augmentations_keep_rows_and_items():
    from unirec_dist.tasks.augment import crop, mask, reorder

    values = torch.arange(1, 11)
    lengths = torch.tensor([6, 4])
    g = torch.Generator().manual_seed(0)
    v, n = crop(values, lengths, 1.0, 0.5, g)
    assert n.tolist() == [3, 2]
    assert set(v[:3].tolist()) <= set(range(1, 7)) and v[:3].diff().eq(1).all()
    v, n = reorder(values, lengths, 1.0, 0.5, g)
    assert n.tolist() == [6, 4]
    assert sorted(v[:6].tolist()) == list(range(1, 7)) and sorted(v[6:].tolist()) == [7, 8, 9, 10]
    v, n = mask(values, lengths, 1.0, g)
    assert v.eq(0).all() and n.tolist() == [6, 4]


@pytest.mark.parametrize("kind,weights", [
    ("retrieval", None), ("rating", None), ("ctr", None),
    ("multi", {"retrieval": 1.0, "rating": 0.5, "ctr": 0.5}),
])
def test_tasks_backprop(ds, kind, weights):
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    task_cfg = TaskSection(kind=kind, weights=weights or {})
    torch.manual_seed(0)
    model = _model(ds, "sasrec", task=task_cfg)
    task = build_task(task_cfg, _manifest(ds))
    batch = next(iter(SequenceBatches(TrainSequences.from_dir(ds), 8, 10)))
    loss, parts = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.embedding.item_ec.embeddings["t_item"].weight.grad.abs().sum() > 0
    if kind == "multi":
        assert set(parts) == {"retrieval", "rating", "ctr"}
        want = parts["retrieval"] + 0.5 * parts["rating"] + 0.5 * parts["ctr"]
        torch.testing.assert_close(loss.detach(), want)


def test_contrastive_term_is_added(ds):
    from unirec_dist.config.train import AugmentSection
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    task_cfg = TaskSection(augment=AugmentSection(crop=1.0, mask=0.2, contrastive_weight=0.1))
    model = _model(ds, "sasrec", task=task_cfg).train()
    task = build_task(task_cfg, _manifest(ds))
    batch = next(iter(SequenceBatches(TrainSequences.from_dir(ds), 8, 10)))
    loss, parts = task.loss(model, batch)
    assert set(parts) == {"retrieval", "contrastive"}
    assert parts["contrastive"] > 0
    loss.backward()


def test_info_nce_by_hand():
    from unirec_dist.tasks.sequence import info_nce

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = a.clone()
    loss = info_nce(a, b, 1.0)
    # row 0 (a0): sims to [a1, b0, b1] = [0, 1, 0]; positive b0
    want = -1.0 + math.log(math.exp(0) + math.exp(1) + math.exp(0))
    assert abs(loss.item() - want) < 1e-5


def test_grouped_negatives_by_hand():
    from unirec_dist.models.heads.retrieval import sampled_softmax_loss

    torch.manual_seed(0)
    P, D, N, K, G = 5, 3, 9, 4, 2
    q = torch.nn.functional.normalize(torch.randn(P, D), dim=1)
    items = torch.nn.functional.normalize(torch.randn(N, D), dim=1)
    pos = torch.tensor([1, 2, 3, 4, 5])
    loss = sampled_softmax_loss(q, pos, items, 0.5, K, generator=torch.Generator().manual_seed(3), group=G)
    # replay the draws: perm over 6 slots (5 positions + 1 pad), then 3 groups of K negatives
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(6, generator=g)
    negs = torch.randint(1, N, (3, K), generator=g)
    total = 0.0
    for p in range(P):
        slot = int((perm == p).nonzero())
        vals = [float(q[p] @ items[pos[p]]) / 0.5]
        for n in negs[slot // G].tolist():
            vals.append(-1e4 if n == int(pos[p]) else float(q[p] @ items[n]) / 0.5)
        total += -vals[0] + math.log(sum(math.exp(v) for v in vals))
    assert abs(loss.item() - total / P) < 1e-5


def test_a_dim_the_fused_kernel_cannot_run_is_stored_padded(ds):
    """dim 10 (like the published recipes' 50): tables are stored 12 wide (FBGEMM's fused kernel
    needs a multiple of 4), vectors are the first 10 columns, the padding columns never train."""
    from unirec_dist.models.factory import build_model

    torch.manual_seed(0)
    mcfg = ModelSection(embedding=EmbeddingSection(dim=10, item_features=["*"], user_id=True),
                        encoder=SASRecConfig(num_blocks=1, num_heads=2, ffn_dim=8, dropout=0.0))
    model = build_model(mcfg, _manifest(ds), max_len=10)
    model.embedding.set_item_features(pq.read_table(ds / "items.parquet"))
    emb = model.embedding
    item_w = emb.item_ec.embeddings["t_item"].weight
    assert item_w.shape[1] == 12 and emb.user_ec.embeddings["t_user"].weight.shape[1] == 12
    assert all(b.weight.shape[1] == 12 for b in emb.content_ebc.embedding_bags.values())
    ids = torch.tensor([3, 7])
    v = emb.item_vectors(ids)
    assert v.shape == (2, 10) and emb.user_vectors(torch.tensor([1, 2])).shape == (2, 10)
    v.sum().backward()
    assert item_w.grad[ids, :10].abs().sum() > 0 and item_w.grad[:, 10:].abs().sum() == 0


def test_all_empty_histories_give_zero_queries(ds):
    model = _model(ds, "sasrec").eval()
    batch = make_seq_batch(pa.array([1, 2]), pa.array([[], []], pa.list_(pa.int32())), 10)
    assert torch.all(model.query_embeddings(batch) == 0)


@pytest.mark.parametrize("kind", ["sasrec", "hstu"])
def test_evaluation_fast_path_gives_identical_metrics(ds, kind):
    """Evaluation looks up only the real history items (then pads) under inference_mode; the
    metrics and query vectors must equal, to the last bit, those of the former path (every padded
    slot looked up, then masked, under no_grad)."""
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.metrics.evaluate import evaluate
    from unirec_dist.models.seqrec import pad_jagged

    torch.manual_seed(1)
    model = _model(ds, kind).eval()

    class Reference:
        max_len = model.max_len

        def item_embeddings(self):
            return model.item_embeddings()

        def query_embeddings(self, batch):
            with torch.no_grad():
                jt = batch.seq["item"]
                lengths = jt.lengths().long()
                width = max(int(lengths.max()), 1)
                ids = pad_jagged(jt.values().long(), lengths, width)
                vecs = model.embedding.item_vectors(ids.reshape(-1)).view(ids.shape[0], width, -1)
                mask = (torch.arange(width)[None, :] < lengths[:, None]).unsqueeze(-1)
                return model.norm(model.encoder.last_states(vecs * mask.to(vecs.dtype), lengths))

    data = PreparedDataset.open(ds)
    batch = make_seq_batch(pa.array([1, 2, 3]), pa.array([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11]]), 10)
    assert torch.equal(model.query_embeddings(batch), Reference().query_embeddings(batch))
    for mask_seen in (False, True):
        fast = evaluate(model, data, "test", mask_seen=mask_seen, batch_size=7, progress=False)["metrics"]
        ref = evaluate(Reference(), data, "test", mask_seen=mask_seen, batch_size=7, progress=False)["metrics"]
        assert fast == ref


@pytest.mark.parametrize("group,in_batch", [(1, 0), (1, 5), (4, 3)])
def test_sampled_softmax_looks_up_only_the_rows_it_uses(group, in_batch):
    """The lookup form (what a step over a big catalogue uses) gives the same loss and gradients
    as the whole (N, D) matrix for the same draws, in one call with each used row once."""
    from unirec_dist.models.heads.retrieval import sampled_softmax_loss

    g = torch.Generator().manual_seed(3)
    N, D, P, K = 5000, 8, 12, 7
    table = torch.randn(N, D, generator=g)
    q = torch.randn(P, D, generator=g)
    pos = torch.randint(1, N, (P,), generator=g)
    logpop = torch.randn(N, generator=g)

    def loss(form):
        w = table.clone().requires_grad_(True)
        calls = []

        def rows(ids):
            calls.append(ids)
            return w[ids] * 2.0

        vecs = (w * 2.0) if form == "whole" else rows
        out = sampled_softmax_loss(q, pos, vecs, 0.1, K, in_batch, logpop, torch.Generator().manual_seed(7),
                                   group=group, n_rows=N)
        out.backward()
        return out.detach(), w.grad, calls

    a, ga, _ = loss("whole")
    b, gb, calls = loss("lookup")
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a, b)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-7)
    assert len(calls) == 1 and calls[0].unique().numel() == calls[0].numel()
    assert set(pos.tolist()) <= set(calls[0].tolist()) and calls[0].numel() <= P * (1 + K) + in_batch
    touched = ga.abs().sum(1).nonzero().flatten()
    assert set(touched.tolist()) <= set(calls[0].tolist())   # every row with a gradient was looked up
