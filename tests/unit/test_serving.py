"""Recommender on a synthetic bundle: exact top-K against numpy, exclusion, HNSW recall, the three
explanation methods against hand computations, and every request mistake as a RequestError."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unirec_dist.errors import UnirecError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    return make_synthetic_bundle(tmp_path_factory.mktemp("b") / "bundle", n_items=500, dim=8, n_users=30,
                                 history_len=12, max_len=10)


@pytest.fixture(scope="module")
def rec(bundle):
    from unirec_dist.serving.recommender import Recommender

    return Recommender.from_bundle(bundle, max_k=100, max_history=40)


def brute_force(rec, hist: np.ndarray, k: int, exclude: bool) -> list[str]:
    items = rec.items.numpy()
    q = items[hist[-rec.max_len:]].mean(0)          # the synthetic model: mean of the last max_len
    s = items @ q
    s[0] = -np.inf
    if exclude:
        s[hist] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))[:k]  # score desc, then lower id
    return [rec.items_vocab.raw(int(i)) for i in order]


@pytest.mark.parametrize("exclude", [True, False])
def test_recommend_known_user_matches_numpy(rec, exclude):
    for u in ["u1", "u2", "u30"]:
        hist = rec.resolve(user_id=u)[1]
        got = rec.recommend(user_id=u, k=15, exclude_seen=exclude)
        assert [r.item for r in got] == brute_force(rec, hist, 15, exclude)
        assert [r.rank for r in got] == list(range(1, 16))
        assert all(a.score >= b.score for a, b in zip(got, got[1:]))
        seen = {rec.items_vocab.raw(int(i)) for i in hist}
        if exclude:
            assert not seen & {r.item for r in got}


def test_live_history_raw_and_integer_ids(rec):
    hist = ["i5", "i17", "i300"]
    got = rec.recommend(history=hist, k=5)
    assert [r.item for r in got] == brute_force(rec, np.array([5, 17, 300]), 5, True)
    assert not {r.item for r in got} & set(hist)


def test_exclusion_can_exhaust_the_catalogue(tmp_path):
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    b = make_synthetic_bundle(tmp_path / "tiny", n_items=6, dim=4, n_users=2, history_len=2)
    r = Recommender.from_bundle(b, max_history=10)
    got = r.recommend(history=["i1", "i2", "i3", "i4"], k=5)
    assert sorted(x.item for x in got) == ["i5", "i6"]  # only two unseen items remain
    assert len(r.recommend(history=["i1"], k=5, exclude_seen=False)) == 5


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"user_id": "u1", "history": ["i1"]}, "exactly one"),
    ({"user_id": "nobody"}, "unknown user_id"),
    ({"history": []}, "empty"),
    ({"history": ["i1"] * 41}, "at most 40"),
    ({"history": ["i1", "nope", "i2"]}, "unknown item id.*'nope'"),
    ({"history": ["i1", 3.5]}, "strings or integers"),
    ({"user_id": "u1", "k": 0}, "between 1 and 100"),
    ({"user_id": "u1", "k": 101}, "between 1 and 100"),
    ({"user_id": "u1", "k": "10"}, "integer"),
])
def test_request_errors(rec, kwargs, match):
    from unirec_dist.serving.recommender import RequestError

    with pytest.raises(RequestError, match=match) as e:
        rec.recommend(**kwargs)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, UnirecError)


def test_unknown_user_is_404(rec):
    from unirec_dist.serving.recommender import UnknownUserError

    with pytest.raises(UnknownUserError) as e:
        rec.recommend(user_id="ghost")
    assert e.value.status == 404


def test_explain_occlusion_is_the_score_drop(rec):
    ex = rec.explain(user_id="u3", k=3, top=50, method="occlusion")
    assert ex.method == "occlusion" and ex.per_item
    hist = rec.resolve(user_id="u3")[1]
    kept = hist[-rec.max_len:]
    items = rec.items.numpy()
    for it in ex.items:
        j = rec.items_vocab.index(it.item)
        full = items[kept].mean(0) @ items[j]
        assert it.score == pytest.approx(full, abs=1e-5)
        assert len(it.contributions) == len(kept)       # top=50 > max_len: all kept positions
        for c in it.contributions:
            p = c.position - (len(hist) - len(kept))
            without = np.delete(kept, p)
            assert c.weight == pytest.approx(full - items[without].mean(0) @ items[j], abs=1e-5)
            assert c.item == rec.items_vocab.raw(int(hist[c.position]))
        w = [c.weight for c in it.contributions]
        assert w == sorted(w, reverse=True)


def test_explain_similarity_and_given_items(rec):
    ex = rec.explain(history=["i1", "i2", "i3"], items=["i10", "i20"], top=2, method="similarity")
    assert [it.item for it in ex.items] == ["i10", "i20"] and ex.method == "similarity"
    items = torch.nn.functional.normalize(rec.items, dim=1).numpy()
    for it in ex.items:
        j = rec.items_vocab.index(it.item)
        sims = {f"i{h}": float(items[h] @ items[j]) for h in (1, 2, 3)}
        best = sorted(sims.items(), key=lambda kv: -kv[1])[:2]
        assert [(c.item, round(c.weight, 5)) for c in it.contributions] == [(k, round(v, 5)) for k, v in best]


def test_explain_attention_rollout_with_a_model_that_exposes_it(rec):
    from unirec_dist.serving.explain import attribute, rollout

    class WithAttention:
        max_len = 4

        def attention_maps(self, batch):
            L = int(batch.seq["item"].lengths()[0])
            a = torch.tril(torch.ones(L, L))
            a = a / a.sum(1, keepdim=True)              # uniform causal attention
            return [a.expand(1, 2, L, L), a.expand(1, 2, L, L)]

    att = attribute(WithAttention(), rec.items, np.array([7, 8, 9, 10, 11]), 0, np.array([1, 2]), "attention")
    assert att.method == "attention" and not att.per_item
    assert att.positions.tolist() == [1, 2, 3, 4]       # the last max_len positions
    np.testing.assert_allclose(att.weights.sum(1), 1.0, rtol=1e-5)
    # hand rollout for L = 4: A' = 0.5 A + 0.5 I, two layers
    A = np.tril(np.ones((4, 4)))
    A = A / A.sum(1, keepdims=True)
    A = 0.5 * A + 0.5 * np.eye(4)
    np.testing.assert_allclose(att.weights[0], (A @ A)[-1], rtol=1e-5)
    np.testing.assert_allclose(rollout([torch.eye(3)], 3), [0, 0, 1])


def test_explain_errors(rec):
    from unirec_dist.serving.recommender import RequestError

    with pytest.raises(RequestError, match="no attention"):
        rec.explain(user_id="u1", method="attention")
    with pytest.raises(RequestError, match="method must be one of"):
        rec.explain(user_id="u1", method="magic")
    with pytest.raises(RequestError, match="top must be"):
        rec.explain(user_id="u1", top=0)
    with pytest.raises(RequestError, match="unknown item"):
        rec.explain(user_id="u1", items=["zzz"])


def test_hnsw_matches_exact_and_honours_exclusion(bundle):
    from unirec_dist.serving.recommender import Recommender

    r = Recommender.from_bundle(bundle, index="hnsw", hnsw={"M": 16, "ef_construction": 80, "ef_search": 64})
    assert r.index.kind == "hnsw" and r.index_recall is not None and r.index_recall >= 0.9
    meta = r.metadata()
    assert meta["index"]["kind"] == "hnsw" and meta["index"]["recall_at_10"] == r.index_recall
    exact = Recommender.from_bundle(bundle)
    for u in ["u1", "u5", "u9"]:
        hist = {r.items_vocab.raw(int(i)) for i in r.resolve(user_id=u)[1]}
        got = r.recommend(user_id=u, k=10)
        assert len(got) == 10 and not hist & {x.item for x in got}
        ref = exact.recommend(user_id=u, k=10)
        assert len({x.item for x in got} & {x.item for x in ref}) >= 8
        exact_scores = {x.item: x.score for x in ref}
        for x in got:  # scores are exact dot products even when the candidate set is approximate
            if x.item in exact_scores:
                assert x.score == pytest.approx(exact_scores[x.item], abs=1e-5)


def test_prebuilt_hnsw_in_bundle_is_loaded(tmp_path):
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    b = make_synthetic_bundle(tmp_path / "ann", n_items=300, dim=8, n_users=10,
                              hnsw={"M": 8, "ef_construction": 40, "ef_search": 32})
    assert (b / "ann" / "hnsw.faiss").is_file()
    r = Recommender.from_bundle(b, index="hnsw")
    assert r.index.params()["M"] == 8 and r.index.params()["ef_search"] == 32
    assert len(r.recommend(user_id="u1", k=5)) == 5


def test_metadata_and_examples(rec):
    m = rec.metadata()
    assert m["vocab_sizes"] == {"item": 501, "user": 31}
    assert m["index"]["kind"] == "exact" and m["limits"] == {"max_k": 100, "max_history": 40}
    assert m["model"]["builder"] == "synthetic-meanpool" and m["model"]["dim"] == 8
    assert m["explain_methods"] == ["occlusion", "similarity"]
    ex = rec.examples()
    assert ex[0]["user_id"] == "u1" and ex[1]["history"] == ["i1", "i2", "i3"]


def test_ray_app_builder_arguments(bundle):
    pytest.importorskip("ray.serve")
    from ray.serve import Application

    from unirec_dist.serving.ray_app import app_builder

    with pytest.raises(UnirecError, match="needs bundle"):
        app_builder({})
    with pytest.raises(UnirecError, match="unknown argument"):
        app_builder({"bundle": str(bundle), "replica": 2})
    # binding describes the deployment; nothing starts until serve.run
    assert isinstance(app_builder({"bundle": str(bundle), "replicas": "2", "index": "exact"}), Application)
