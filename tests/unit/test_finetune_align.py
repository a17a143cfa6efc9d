"""Fine-tuning building blocks: vocab alignment maps, key normalisation, feature agreement,
row copies, pointwise metrics and the finetune config schema; expectations computed by hand."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from unirec_dist.config.finetune import FinetuneConfig
from unirec_dist.config.loader import from_dict, load_config
from unirec_dist.data import align as A
from unirec_dist.errors import ConfigError
from unirec_dist.metrics.pointwise import auc, log_loss, mae, rmse

REPO = Path(__file__).resolve().parents[2]


def vocab(raws: list[str]) -> pa.Table:
    # deliberately not in index order: the map must follow `index`, not row order
    idx = list(range(1, len(raws) + 1))
    return pa.table({"raw": pa.array(raws[::-1]), "index": pa.array(idx[::-1], pa.int32())})


def test_vocab_map_by_raw_value():
    src = vocab(["a", "b", "c"])            # a=1 b=2 c=3
    tgt = vocab(["c", "x", "a", "y"])       # c=1 x=2 a=3 y=4
    m = A.vocab_map(tgt, src)
    assert m.tolist() == [0, 3, -1, 1, -1]


def test_vocab_map_sizes_pad_missing_rows():
    m = A.vocab_map(vocab(["a"]), vocab(["a", "b"]), n_target=3, n_source=3)
    assert m.tolist() == [0, 1, -1]         # row 2 has no raw value: new


def test_key_map_and_normalised_keys():
    t = A.normalise_key([pa.array([None, "Toy  Story ", "Heat", None]), pa.array([None, 1995, 1995, 1990])])
    s = A.normalise_key([pa.array([None, "heat", "toy story"]), pa.array([None, 1995, 1995])])
    assert t.to_pylist() == [None, "toy story | 1995", "heat | 1995", None]
    assert A.key_map(t, s).tolist() == [0, 2, 1, -1]


def test_normalise_title_label_and_key():
    titles = pa.array(["Matrix, The", "The Matrix", "City of Lost Children, The (Cité des enfants perdus, La)",
                       "Professional, The (a.k.a. Leon: The Professional)", "Sunset Blvd. (a.k.a. Sunset Boulevard)",
                       "(500) Days", "Tom & Jerry", "Crouching Tiger / a.k.a. Wo hu", "Appartement, L'",
                       "L'Appartement", "Shall We Dance?", None])
    assert A.normalise_title(titles).to_pylist() == [
        "the matrix", "the matrix", "the city of lost children", "the professional", "sunset blvd", "500 days",
        "tom and jerry", "crouching tiger", "l appartement", "l appartement", "shall we dance", None]
    assert A.normalise_label(pa.array(["Sci-Fi", "SciFi", "sci fi", "Children's", "Childrens", None])).to_pylist() \
        == ["scifi"] * 3 + ["childrens"] * 2 + [None]
    # one film written two ways aligns by title + year; the year still tells remakes apart
    t = A.normalise_key([pa.array([None, "Matrix, The", "Heat", "Psycho"]), pa.array([None, 1999, 1995, 1998])])
    s = A.normalise_key([pa.array([None, "Psycho", "The Matrix (1999 re-release)", "HEAT!"]),
                         pa.array([None, 1960, 1999, 1995])])
    assert A.key_map(t, s).tolist() == [0, 2, 3, -1]
    # genre vocabularies whose spelling changed align as labels
    m = A.vocab_map(vocab(["Sci Fi", "Childrens", "War"]), vocab(["Children's", "Sci-Fi"]), labels=True)
    assert m.tolist() == [0, 2, 1, -1]


def test_copy_rows():
    dst = torch.zeros(4, 2)
    src = torch.arange(6, dtype=torch.float32).view(3, 2)
    n = A.copy_rows(dst, src, np.array([0, 2, -1, 1]))
    assert n == 3
    assert dst.tolist() == [[0, 1], [4, 5], [0, 0], [2, 3]]


class _DS:
    """A stand-in for PreparedDataset: items table + vocabs."""

    def __init__(self, years: list[int | None], year_vocab: list[str]) -> None:
        self.n_items = len(years)
        self._items = pa.table({"item": pa.array(range(1, len(years) + 1), pa.int32()),
                                "year": pa.array([0 if y is None else y for y in years], pa.int32())})
        self._vocab = vocab(year_vocab)

    def table(self, name, columns=None):
        return self._items.select(columns) if columns else self._items

    def vocab(self, kind):
        return self._vocab


def test_feature_agreement_counts_only_known_pairs():
    # target items 1..4 with year codes -> raw; source codes in another vocab order
    tgt = _DS([1, 2, None, 1], ["1995", "1996"])          # 1995, 1996, missing, 1995
    src = _DS([2, 1, 1], ["1996", "1995"])                # 1995, 1996, 1996
    m = np.array([0, 1, 3, 2, -1])                        # t1->s1, t2->s3, t3->s2, t4 new
    chk = A.feature_agreement(tgt, src, m, "year")
    # t1 1995 vs s1 1995 agree; t2 1996 vs s3 1996 agree; t3 missing: not compared; t4 new
    assert (chk.compared, chk.agree) == (2, 2)
    chk = A.feature_agreement(tgt, src, np.array([0, 2, 1, -1, 3]), "year")
    # t1 1995 vs s2 1996 no; t2 1996 vs s1 1995 no; t4 1995 vs s3 1996 no
    assert (chk.compared, chk.agree) == (3, 0)


def test_pointwise_metrics_by_hand():
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4) (0.9>0.1) (0.4=0.4 -> 1/2) (0.4>0.1) = 3.5/4
    assert auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert auc([0.1, 0.9], [1, 0]) == pytest.approx(0.0)
    assert math.isnan(auc([0.3, 0.2], [1, 1]))
    assert log_loss([0.5, 0.5], [1, 0]) == pytest.approx(math.log(2))
    assert log_loss([0.8, 0.1], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.9)) / 2)


def test_finetune_yaml_files_load():
    for p in sorted((REPO / "configs" / "finetune").glob("*.yaml")):
        cfg = load_config(FinetuneConfig, p)
        assert cfg.data.path


@pytest.mark.parametrize("data,msg", [
    ({"data": {"path": "x", "fraction": 0.0}}, "data.fraction"),
    ({"data": {"path": "x"}, "init": {"align": "column"}}, "init.align_column"),
    ({"data": {"path": "x"}, "init": {"min_overlap": 1.5}}, "init.min_overlap"),
    ({"data": {"path": "x"}, "freeze": {"lr_multipliers": {"encoder": -1}}}, "freeze.lr_multipliers.encoder"),
    ({"data": {"path": "x"}, "freeze": {"embedings": True}}, "did you mean 'freeze.embeddings'"),
])
def test_finetune_config_errors(data, msg):
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")) as e:
        from_dict(FinetuneConfig, data)
    assert "\n" not in str(e.value)
