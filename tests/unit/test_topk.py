"""The one exact top-K: padding, clamping, exclusion, ties, NaN; against hand-written answers."""
from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from unirec_dist.metrics.topk import topk, topk_from_scores

NEG = float("-inf")


def items_with_scores(values: list[float]) -> torch.Tensor:
    """(N + 1, 1) item matrix whose dot product with a query of 1.0 is `values` (row 0 = padding)."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1)


def one(b: int = 1) -> torch.Tensor:
    return torch.ones((b, 1))


def test_simple_order_and_padding_never_returned():
    # padding row 0 has the highest raw score and must still never come back
    items = items_with_scores([100.0, 1.0, 5.0, 3.0, 4.0])
    scores, ids = topk(one(), items, 3)
    assert ids.tolist() == [[2, 4, 3]]
    assert scores.tolist() == [[5.0, 4.0, 3.0]]


def test_dot_product_per_query():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    scores, ids = topk(q, items, 2)
    # q0: scores 1, 0, 1 -> tie between 1 and 3, lower id first
    # q1: scores 0, 2, 2 -> tie between 2 and 3
    # q2: scores -1, -1, -2 -> tie between 1 and 2
    assert ids.tolist() == [[1, 3], [2, 3], [1, 2]]
    assert scores.tolist() == [[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]]


def test_ties_lower_id_first_across_the_boundary():
    # items 2, 3, 5 tie at 2.0; k = 3 takes item 4 (3.0) then the two lowest tied ids
    items = items_with_scores([0.0, 1.0, 2.0, 2.0, 3.0, 2.0])
    _, ids = topk(one(), items, 3)
    assert ids.tolist() == [[4, 2, 3]]


def test_all_equal_scores_give_ascending_ids_for_every_row():
    items = torch.zeros((8, 4))
    q = torch.randn(5, 4)
    scores, ids = topk(q, items, 4)
    assert ids.tolist() == [[1, 2, 3, 4]] * 5
    assert (scores == 0).all()


def test_ties_do_not_depend_on_batch_composition():
    torch.manual_seed(0)
    # integer-valued embeddings make many exact ties
    items = torch.randint(-2, 3, (50, 3)).float()
    q = torch.randint(-2, 3, (40, 3)).float()
    _, full = topk(q, items, 7)
    parts = torch.cat([topk(q[i : i + 3], items, 7)[1] for i in range(0, 40, 3)])
    assert torch.equal(full, parts)
    # and the result equals a reference: stable sort over (score desc, id asc)
    s = q @ items.T
    s[:, 0] = NEG
    ref = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :7]
    assert torch.equal(full, ref)


def test_k_larger_than_catalogue_is_clamped():
    items = items_with_scores([0.0, 1.0, 3.0, 2.0])
    scores, ids = topk(one(2), items, 200)
    assert ids.shape == (2, 3)
    assert ids.tolist() == [[2, 3, 1]] * 2
    assert scores.tolist() == [[3.0, 2.0, 1.0]] * 2


def test_exclude_padded_tensor():
    items = items_with_scores([0.0, 1.0, 5.0, 3.0, 4.0])
    exclude = torch.tensor([[2, 0], [4, 3]])  # 0 = padding in the exclusion list
    _, ids = topk(one(2), items, 2, exclude=exclude)
    assert ids.tolist() == [[4, 3], [2, 1]]


def test_exclude_kjt():
    items = items_with_scores([0.0, 1.0, 5.0, 3.0, 4.0])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=torch.tensor([2, 4, 3]), lengths=torch.tensor([1, 0, 2])
    )
    _, ids = topk(one(3), items, 2, exclude=kjt)
    assert ids.tolist() == [[4, 3], [2, 4], [2, 1]]


def test_fewer_candidates_than_k_fill_with_zero_and_minus_inf():
    items = items_with_scores([0.0, 1.0, 5.0, 3.0])
    scores, ids = topk(one(), items, 3, exclude=torch.tensor([[2, 3]]))
    assert ids.tolist() == [[1, 0, 0]]
    assert scores[0, 0].item() == 1.0 and scores[0, 1:].tolist() == [NEG, NEG]


def test_nan_scores_rank_last():
    items = items_with_scores([0.0, float("nan"), 2.0, 1.0])
    scores, ids = topk(one(), items, 2)
    assert ids.tolist() == [[2, 3]]
    _, ids = topk(one(), items, 3)
    assert ids.tolist() == [[2, 3, 0]]  # NaN counts as "no score"


def test_scores_are_the_dot_products():
    torch.manual_seed(1)
    q, items = torch.randn(6, 8), torch.randn(30, 8)
    scores, ids = topk(q, items, 5)
    assert torch.allclose(scores, (q @ items.T).gather(1, ids))
    ref = torch.topk((q @ items.T)[:, 1:], 5).indices + 1
    assert torch.equal(ids, ref)  # random floats: no ties, so torch.topk agrees


def test_bad_arguments():
    with pytest.raises(ValueError):
        topk(one(), items_with_scores([0.0, 1.0]), 0)
    with pytest.raises(ValueError):
        topk(torch.ones(2, 3), torch.ones(4, 2), 1)
    with pytest.raises(ValueError):
        topk_from_scores(torch.zeros(2, 4), 1, exclude=torch.tensor([[1]]))


def test_against_full_stable_sort_with_exclusions_and_ties():
    torch.manual_seed(2)
    items = torch.randint(-1, 2, (40, 2)).float()  # 9 distinct vectors: ties everywhere
    q = torch.randint(-1, 2, (25, 2)).float()
    exclude = torch.randint(0, 40, (25, 30))  # most items excluded for some rows
    for k in (1, 5, 39):
        scores, ids = topk(q, items, k, exclude=exclude)
        s = q @ items.T
        s[:, 0] = NEG
        s[torch.arange(25).unsqueeze(1).expand_as(exclude), exclude] = NEG
        ref_s, ref = torch.sort(s, dim=1, descending=True, stable=True)
        ref, ref_s = ref[:, :k].clone(), ref_s[:, :k]
        ref[ref_s == NEG] = 0
        assert torch.equal(ids, ref), k
        assert torch.equal(scores, ref_s), k


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_blocks_merged_equal_topk(k):
    """Any split of the catalogue into blocks, each ranked by block_topk with its own part of the
    mask, merges (merge_topk) into exactly topk's lists: same ids, same scores, same tie order."""
    from unirec_dist.metrics.topk import block_topk, merge_topk, topk_from_scores

    g = torch.Generator().manual_seed(k)
    scores = torch.randint(-3, 4, (9, 31), generator=g).float()     # many exact ties
    scores[2, 5] = float("nan")
    exclude = torch.randint(0, 31, (9, 6), generator=g)
    want_s, want_i = topk_from_scores(scores.clone(), k, exclude)
    for cuts in ([0, 31], [0, 1, 31], [0, 10, 11, 30, 31], [0, 4, 8, 12, 16, 20, 24, 28, 31]):
        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            block = scores[:, lo:hi].clone()
            rows, cols = torch.nonzero((exclude.unsqueeze(2) == torch.arange(lo, hi)).any(1), as_tuple=True)
            block[rows, cols] = float("-inf")
            parts.append(block_topk(block, min(k, 30), lo))
        got_s, got_i = merge_topk(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), min(k, 30))
        assert torch.equal(got_i, want_i), cuts
        assert torch.equal(got_s, want_s), cuts


def test_ranked_lists_in_small_chunks_equal_topk(monkeypatch):
    """One process, the item rows computed and scored a few at a time: the lists of `topk`."""
    import unirec_dist.metrics.sharded as sharded
    from unirec_dist.data.batch import make_seq_batch
    from unirec_dist.metrics.topk import topk

    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(-2, 3, (8, 4), generator=g).float(), torch.randint(-2, 3, (26, 4), generator=g).float()

    class Lookup:
        max_len = 5
        num_item_rows = 26
        calls: list = []

        def item_rows(self, lo, hi):
            self.calls.append((lo, hi))
            return items[lo:hi]

        def query_embeddings(self, batch):
            return users[batch.users]

    import pyarrow as pa

    hist = pa.array([[1, 2], [3], [], [25, 24, 1], [7], [8, 9], [10], [2]], pa.list_(pa.int32()))
    batch = make_seq_batch(pa.array(range(8), pa.int32()), hist, 5)
    exclude = make_seq_batch(pa.array(range(8), pa.int32()), hist, None).seq
    monkeypatch.setattr(sharded, "SCORE_ELEMENTS", 8 * 4)         # 4 item rows per chunk
    model = Lookup()
    [(s, i)] = sharded.ranked_lists(model, [batch], [exclude], 25, 10)
    want_s, want_i = topk(users[:8], items, 10, exclude=exclude)
    assert torch.equal(i, want_i) and torch.equal(s, want_s)
    assert model.calls[:2] == [(0, 4), (4, 8)] and len(model.calls) == 7   # never the whole matrix


@pytest.mark.parametrize("chunk", [2, 3, 256])
def test_short_list_from_chunk_candidates_equals_full_sort(monkeypatch, chunk):
    """The chunked candidate path of `_ranked` (k much smaller than the row): the same ids and
    scores as a full stable sort, with ties everywhere (also between chunk maxima), exclusions,
    a row almost all excluded, a NaN row (plain path) and a last chunk shorter than the rest."""
    import unirec_dist.metrics.topk as T

    monkeypatch.setattr(T, "RANK_CHUNK", chunk)
    widths = []
    plain = T._ranked_all
    monkeypatch.setattr(T, "_ranked_all", lambda s, k: widths.append(s.shape[1]) or plain(s, k))
    g = torch.Generator().manual_seed(chunk)
    n = 40 * chunk + chunk // 2 + 1            # columns = n + 1, not a multiple of the chunk
    scores = torch.randint(-3, 4, (12, n + 1), generator=g).float()
    exclude = torch.randint(0, n + 1, (12, n // 3), generator=g)
    exclude[3] = torch.arange(1, n // 3 + 1)   # row 3: most of its best chunks excluded
    scores[5, 7] = float("nan")
    scores[7] = torch.arange(n + 1).float() % 5     # equal maxima in every chunk
    scores[9] = -3.0                                 # a tie between chunks of different maxima:
    scores[9, [chunk, 2 * chunk, 2 * chunk + 1]] = torch.tensor([5.0, 6.0, 5.0])   # the lower id wins
    exclude[9] = 0
    for k in (1, 2, 5):
        s = scores.clone()
        s[:, 0] = NEG
        s[torch.arange(12).unsqueeze(1).expand_as(exclude), exclude] = NEG
        s = torch.nan_to_num(s, nan=NEG)
        ref_s, ref = torch.sort(s, dim=1, descending=True, stable=True)
        ref, ref_s = ref[:, :k].clone(), ref_s[:, :k]
        ref[ref_s == NEG] = 0
        widths.clear()
        rest = [r for r in range(12) if r != 5]       # a NaN sends its whole batch the plain way
        got_s, got = T.topk_from_scores(scores[rest].clone(), k, exclude[rest])
        assert max(widths) < n + 1                     # the candidate path ran
        nan_s, nan = T.topk_from_scores(scores[5:6].clone(), k, exclude[5:6])
        assert torch.equal(torch.cat([got[:5], nan, got[5:]]), ref), k
        assert torch.equal(torch.cat([got_s[:5], nan_s, got_s[5:]]), ref_s), k
