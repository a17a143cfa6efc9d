"""HSTU's relative time bias and its blocked attention: against a dense reference written out
here (the position-only block as it was, plus the published time term), forward and gradients;
no (B, H, L, L) tensor kept for backward; the bucketisation by hand; timestamps from the batch
to the encoder; the config refusals."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from unirec_dist.errors import ConfigError
from unirec_dist.models.encoders.hstu import HSTUEncoder, time_buckets


def dense_block(blk, x, times):
    """The HSTU block with its whole (B, H, L, L) score tensor: the formula of the module doc."""
    B, L, _ = x.shape
    H = blk.h
    u, v, q, k = F.silu(blk.uvqk(blk.norm_in(x))).split([H * blk.dv, H * blk.dv, H * blk.dqk, H * blk.dqk], -1)
    q, k = (t.view(B, L, H, blk.dqk).transpose(1, 2) for t in (q, k))
    v = v.view(B, L, H, blk.dv).transpose(1, 2)
    i = torch.arange(L)
    rel = i[:, None] - i[None, :]
    bias = blk.rel_pos[rel.clamp(min=0)].expand(B, L, L)
    if times is not None:
        gap = times[:, 1:L + 1, None] - times[:, None, :L]          # next event's time - key's time
        bias = bias + blk.rel_time[time_buckets(gap, blk.time_buckets)]
    attn = F.silu(q @ k.transpose(-1, -2) + bias[:, None]) * ((rel >= 0).float() / blk.max_len)
    av = (attn @ v).transpose(1, 2).reshape(B, L, H * blk.dv)
    return x + blk.out(blk.drop(blk.norm_attn(av) * u))


def dense_encoder(enc, x, lengths, times):
    B, L, D = x.shape
    mask = (torch.arange(L)[None, :] < lengths[:, None]).unsqueeze(-1).float()
    h = (x * math.sqrt(D) + enc.pos.weight[:L]) * mask
    for blk in enc.blocks:
        h = dense_block(blk, h, times if enc.uses_times else None) * mask
    return enc.final_norm(h) * mask


def _randomised(enc):
    with torch.no_grad():   # zero-initialised position biases would hide indexing errors
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc


def _times(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randint(0, 200_000, (B, L + 1), generator=g), 1) + 978_300_000


def test_buckets_by_hand():
    gaps = torch.tensor([0, 1, 2, -2, 3600, 86_400 * 365, 10**60 // 10**45])
    want = [0, 0, int(math.log(2) / 0.301), int(math.log(2) / 0.301), int(math.log(3600) / 0.301),
            int(math.log(86_400 * 365) / 0.301), 100]
    assert time_buckets(gaps, 100).tolist() == want


@pytest.mark.parametrize("time_bias", [False, True])
def test_blocked_equals_dense_reference_forward_and_gradients(time_bias):
    torch.manual_seed(0)
    enc = _randomised(HSTUEncoder(8, 40, num_blocks=2, num_heads=2, dqk=4, dv=3, dropout=0.0,
                                  time_bias=time_bias, time_buckets=64, attn_block=5)).train()
    B, L = 3, 23
    x = torch.randn(B, L, 8)
    lengths = torch.tensor([23, 9, 1])
    times = _times(B, L)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = enc(xa, lengths, times=times)
    ref = dense_encoder(enc, xb, lengths, times)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(got)
    grads = torch.autograd.grad((got * w).sum(), [xa, *enc.parameters()])
    ref_grads = torch.autograd.grad((ref * w).sum(), [xb, *enc.parameters()])
    for (name, _), g, r in zip([("x", None), *enc.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)
    # the last-position query path, in blocks too
    enc.eval()
    with torch.no_grad():
        q = enc.last_states(x, lengths, times=times)
        full = dense_encoder(enc, x, lengths, times)
    torch.testing.assert_close(q, full[torch.arange(B), lengths - 1], rtol=1e-5, atol=1e-5)


def test_time_bias_off_is_the_position_only_model():
    """Off: no time parameter, the same initialisation draw as the model without the option, and
    timestamps are not read (any value gives the same states)."""
    torch.manual_seed(3)
    off = HSTUEncoder(8, 30, num_blocks=2, num_heads=1, dqk=4, dv=4, dropout=0.0)
    torch.manual_seed(3)
    also_off = HSTUEncoder(8, 30, num_blocks=2, num_heads=1, dqk=4, dv=4, dropout=0.0, time_bias=False,
                           attn_block=4)
    assert not off.uses_times and not any("rel_time" in k for k in off.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), also_off.state_dict().values()))
    x, lengths = torch.randn(2, 12, 8), torch.tensor([12, 5])
    _randomised(off).eval()
    with torch.no_grad():
        torch.testing.assert_close(off(x, lengths), dense_encoder(off, x, lengths, None), rtol=0, atol=1e-6)
        assert torch.equal(off(x, lengths, times=_times(2, 12, 1)), off(x, lengths, times=_times(2, 12, 2)))
    on = _randomised(HSTUEncoder(8, 30, num_blocks=2, num_heads=1, dqk=4, dv=4, dropout=0.0, time_bias=True)).eval()
    with torch.no_grad():
        assert not torch.allclose(on(x, lengths, times=_times(2, 12, 1)), on(x, lengths, times=_times(2, 12, 2)))
    with pytest.raises(ValueError, match="time_bias needs times"):
        on(x, lengths)


def test_no_quadratic_tensor_is_kept_for_backward():
    """Training at L = 96 in blocks of 8 queries: nothing autograd keeps is as large as one head's
    L x L scores (the dense block keeps several (B, H, L, L) tensors)."""
    torch.manual_seed(0)
    B, L, H = 2, 96, 2
    enc = HSTUEncoder(8, L, num_blocks=2, num_heads=H, dqk=4, dv=4, dropout=0.0, time_bias=True,
                      attn_block=8).train()
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    x = torch.randn(B, L, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = enc(x, torch.full((B,), L), times=_times(B, L))
    assert max(sizes) < B * H * L * L // 4
    out.sum().backward()            # recomputed blocks still give gradients
    assert x.grad is not None and torch.isfinite(x.grad).all()
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dense_encoder(enc, x, torch.full((B,), L), _times(B, L))
    assert max(sizes) >= B * H * L * L     # the reference does keep them: the check can fail


def test_training_batches_and_queries_carry_timestamps(tmp_path):
    """A prepared dataset's event times reach the model: training batches hold each item's
    timestamp, evaluation queries the history's and the first target's (the query time)."""
    from tests.synthetic import prepared_dataset
    from unirec_dist.data.batch import iter_query_batches
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.training.data import SequenceBatches, train_source

    root = prepared_dataset(tmp_path, n_users=12, n_items=20)
    ds = PreparedDataset.open(root)
    inter = ds.table("interactions").to_pydict()
    events: dict[int, list] = {}
    for u, i, t in zip(inter["user"], inter["item"], inter["timestamp"]):
        events.setdefault(u, []).append((i, t))

    class Data:
        train_on, unit_rows, ingest, ingest_memory_mb = "train+valid", 1024, "memory", 256.0

    src = train_source(root, Data, with_times=True)
    b = next(iter(SequenceBatches(src, batch_size=4, max_len=50, shuffle=False)))
    ends = np.cumsum(b.seq["item"].lengths().numpy())
    items = np.split(b.seq["item"].values().numpy(), ends[:-1])
    ts = np.split(b.extra["timestamps"].numpy(), ends[:-1])
    for u, it, t in zip(b.users.tolist(), items, ts):      # train + valid target: all but the test item
        assert list(zip(it.tolist(), t.tolist())) == events[u][:-1]
    q = next(iter_query_batches(ds.table("test"), 5, 50))
    test = ds.table("test").slice(0, 5).to_pydict()
    assert q.extra["timestamps"].tolist() == sum(test["history_timestamps"], [])
    assert q.extra["query_time"].tolist() == [t[0] for t in test["target_timestamps"]]


def _cfg(root, **enc):
    from unirec_dist.config.loader import from_dict
    from unirec_dist.config.train import TrainConfig

    return from_dict(TrainConfig, {"name": "t", "data": {"path": str(root), "max_len": 8},
                                   "model": {"embedding": {"dim": 8},
                                             "encoder": {"kind": "hstu", "num_blocks": 1, "dqk": 4, "dv": 4,
                                                         "time_bias": True, **enc}}})


def test_time_bias_needs_a_dataset_with_times(tmp_path):
    """Refused at start, in one line: a log prepared in row order (no real times), and a dataset
    whose queries have no timestamps (prepared before they were kept)."""
    from tests.synthetic import prepared_dataset
    from unirec_dist.training.train import check_inputs

    root = prepared_dataset(tmp_path / "a", n_users=8, n_items=10)
    check_inputs(_cfg(root))        # real times: accepted
    row = tmp_path / "row"
    shutil.copytree(root, row)
    m = json.loads((row / "manifest.json").read_text())
    m["config"]["split"]["order"] = "row"
    (row / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=r"^model.encoder.time_bias: .* has no event times \(prepared with "
                                          r"split.order: row\); set model.encoder.time_bias=false$"):
        check_inputs(_cfg(row))
    old = tmp_path / "old"
    shutil.copytree(root, old)
    t = pq.read_table(old / "valid.parquet")
    pq.write_table(t.drop_columns(["history_timestamps", "target_timestamps"]), old / "valid.parquet")
    with pytest.raises(ConfigError, match=r"valid.parquet has no 'history_timestamps' column .* run `unirec "
                                          r"prepare` again\)$"):
        check_inputs(_cfg(old))


def test_time_bias_refuses_augmentation(tmp_path):
    from unirec_dist.config.loader import from_dict
    from unirec_dist.config.train import TrainConfig

    with pytest.raises(ConfigError, match="model.encoder.time_bias: cannot be combined with task.augment"):
        from_dict(TrainConfig, {"name": "t", "data": {"path": str(tmp_path)},
                                "model": {"encoder": {"kind": "hstu", "time_bias": True}},
                                "task": {"augment": {"crop": 0.5}}})
