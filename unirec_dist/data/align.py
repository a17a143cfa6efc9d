"""Aligning a target dataset's vocabularies to a pretrained model's, and copying rows across.

An index map is an int64 array over the TARGET table's rows: `m[t]` = the pretrained row of
target row t, or -1 for a row the pretrained model has never seen (a new user, item, genre...).
Row 0 (padding / missing value) always maps to 0. Maps are built with Arrow (`index_in`
lookups over the vocab Parquet tables), never with per-row Python.

    vocab_map(target_vocab, source_vocab)             by raw value (ids; labels such as genre
                                                      names and years by `normalise_label`)
    key_map(target_keys, source_keys)                 by a key column (e.g. "the matrix | 1999")
    normalise_title / normalise_label / normalise_key the comparison forms of titles, labels, keys
    item_keys(dataset, columns)                       the prepared dataset's raw item columns
                                                      (items_raw.parquet) -> one key per item
    feature_agreement(...)                            do aligned items agree on a categorical
                                                      feature? (raw ids naming different items)
    copy_rows(dst, src, m)                            dst[t] = src[m[t]] for known rows
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.errors import DataError

log = logging.getLogger(__name__)

KEY_SEP = " | "


def _arr(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _dense_raw(vocab: pa.Table, n_rows: int | None = None) -> pa.Array:
    """Vocab table (raw, index 1..n) -> raw value per row 0..n (row 0 = null)."""
    idx = _arr(vocab["index"]).to_numpy(zero_copy_only=False).astype(np.int64)
    n = int(idx.max(initial=0)) + 1 if n_rows is None else n_rows
    pos = np.full(n, -1, dtype=np.int64)
    ok = (idx >= 1) & (idx < n)
    pos[idx[ok]] = np.flatnonzero(ok)
    raw = _arr(vocab["raw"]).cast(pa.string())
    return raw.take(pa.array(pos, mask=pos < 0))


def lookup(target_values: pa.Array, source_values: pa.Array) -> np.ndarray:
    """For each target value, the row of an equal value in `source_values` (first one), or -1.
    Null target values map to -1."""
    # skip_nulls: a null (missing raw value, padding row) must never match the source's null row 0
    pos = pc.index_in(_arr(target_values), value_set=_arr(source_values), skip_nulls=True)
    return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def vocab_map(target_vocab: pa.Table, source_vocab: pa.Table, n_target: int | None = None,
              n_source: int | None = None, labels: bool = False) -> np.ndarray:
    """Target row -> pretrained row by equal raw value (`labels`: equal `normalise_label`, for
    feature values such as genre names whose spelling varies); (n_target,) int64, -1 = new, [0] = 0."""
    t = _dense_raw(target_vocab, n_target)
    s = _dense_raw(source_vocab, n_source)
    if labels:
        t, s = normalise_label(t), normalise_label(s)
    m = lookup(t, s)
    m[0] = 0
    return m


def key_map(target_keys: pa.Array, source_keys: pa.Array) -> np.ndarray:
    """Like vocab_map over per-row keys (row 0 = padding, keys[0] ignored); null keys are new."""
    m = lookup(target_keys, source_keys)
    m[0] = 0
    return m


# Articles that catalogues move behind the title ("Matrix, The"), English and the languages
# MovieLens titles use most.
_ARTICLES = ("the", "a", "an", "la", "le", "les", "l'", "il", "el", "los", "las", "lo", "das", "der", "die",
             "den", "det", "de", "het", "o", "os", "as", "un", "une", "una", "uno", "ein", "eine")


def normalise_title(titles: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Titles -> the form two catalogues agree on, so that one film written two ways aligns.

    In order: Unicode compatibility form with accents dropped (NFKD, combining marks removed);
    lower case; parenthesised parts after the title removed (MovieLens puts alternate and
    original-language titles there: "Seven (Se7en)", "Shanghai Triad (Yao a yao yao dao waipo
    qiao)", "Foo (a.k.a. Bar)"; a title that starts with one, "(500) Days", keeps it); an
    "a.k.a." alternate after a slash or semicolon dropped; a trailing article moved to the front
    ("matrix, the" -> "the matrix"); "&" -> "and"; every run of punctuation and spaces -> one
    space, trimmed. Null stays null. E.g. "Matrix, The" and "The Matrix" -> "the matrix";
    "City of Lost Children, The (Cité des enfants perdus, La)" -> "the city of lost children";
    "Appartement, L'" and "L'Appartement" -> "l appartement"."""
    s = _arr(titles).cast(pa.string())
    s = pc.replace_substring_regex(pc.utf8_normalize(s, form="NFKD"), r"\p{Mn}+", "")
    s = pc.utf8_lower(s)
    s = pc.utf8_trim_whitespace(s)
    s = pc.utf8_trim_whitespace(pc.replace_substring_regex(s, r"\s+\([^()]*\)", ""))
    s = pc.replace_substring_regex(s, r"\s*[/;]\s*a\.?k\.?a\.?\s.*$", "")
    arts = "|".join(_ARTICLES)
    s = pc.replace_substring_regex(s, rf"^(.+?),\s*({arts})$", r"\2 \1")
    s = pc.replace_substring_regex(s, r"&", " and ")
    s = pc.replace_substring_regex(s, r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim_whitespace(s)


def normalise_label(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Labels (genre names, categories) -> lower case letters and digits only, so that
    "Sci-Fi" / "SciFi" / "sci fi" and "Children's" / "Childrens" are one label. Null stays null."""
    s = _arr(values).cast(pa.string())
    s = pc.replace_substring_regex(pc.utf8_normalize(s, form="NFKD"), r"\p{Mn}+", "")
    return pc.replace_substring_regex(pc.utf8_lower(s), r"[^\p{L}\p{N}]+", "")


def normalise_key(parts: list[pa.Array]) -> pa.Array:
    """Columns -> one key string per row: string parts through `normalise_title`, other parts
    (years, numbers) cast to string, joined by " | ". A null in any part gives a null key (cannot
    be aligned)."""
    norm = []
    for p in parts:
        p = _arr(p)
        if pa.types.is_dictionary(p.type):
            p = p.dictionary_decode()
        if pa.types.is_string(p.type) or pa.types.is_large_string(p.type):
            norm.append(normalise_title(p))
        else:
            norm.append(pc.utf8_trim_whitespace(p.cast(pa.string())))
    if len(norm) == 1:
        return norm[0]
    return pc.binary_join_element_wise(*norm, KEY_SEP)


def item_keys(dataset: Any, columns: list[str], where: str) -> pa.Array:
    """The alignment key of every item row 0..n_items of a prepared dataset, from the raw item
    columns `prepare` kept beside the encoded features (items_raw.parquet): no raw file and no
    network is touched. Row 0 = null."""
    import pyarrow.parquet as pq

    path = dataset.root / "items_raw.parquet"
    if not path.is_file():
        raise DataError(f"{where}: the prepared dataset has no raw item columns (items_raw.parquet: no item table "
                        f"in its source, or prepared by an older version; prepare it again) for init.align_column")
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names or c == "item"]
    if missing:
        raise DataError(f"{where}: the raw item columns have no {missing[0]!r} for init.align_column; "
                        f"columns are: {', '.join(n for n in names if n != 'item')}")
    items = pq.read_table(path, columns=["item", *columns])
    keys = normalise_key([items[c] for c in columns])
    rows = np.full(dataset.n_items + 1, -1, dtype=np.int64)
    rows[_arr(items["item"]).to_numpy(zero_copy_only=False).astype(np.int64)] = np.arange(items.num_rows)
    return keys.take(pa.array(rows, mask=rows < 0))


@dataclass
class FeatureCheck:
    feature: str
    compared: int
    agree: int

    @property
    def agreement(self) -> float:
        return self.agree / self.compared if self.compared else float("nan")


def categorical_raw(dataset: Any, feature: str) -> pa.Array:
    """Raw value of a categorical item feature for item rows 0..n_items (null = missing)."""
    n = dataset.n_items + 1
    items = dataset.table("items", columns=["item", feature])
    codes = np.zeros(n, dtype=np.int64)
    codes[_arr(items["item"]).to_numpy().astype(np.int64)] = _arr(items[feature]).fill_null(0).to_numpy(
        zero_copy_only=False)
    raw = _dense_raw(dataset.vocab(feature))
    return raw.take(pa.array(codes, mask=codes <= 0))


def feature_agreement(target: Any, source: Any, item_map: np.ndarray, feature: str) -> FeatureCheck:
    """Among aligned items where both datasets know `feature`, how many have the same raw value."""
    t = categorical_raw(target, feature)
    s = categorical_raw(source, feature)
    known = np.flatnonzero(item_map > 0)
    tv = t.take(pa.array(known))
    sv = s.take(pa.array(item_map[known]))
    eq = pc.equal(tv, sv)
    compared = int(len(eq) - eq.null_count)
    agree = int(pc.sum(eq.cast(pa.int64())).as_py() or 0)
    return FeatureCheck(feature, compared, agree)


def copy_rows(dst, src, m: np.ndarray) -> int:
    """dst[t] = src[m[t]] for every row with m[t] >= 0 (torch tensors, in place); returns count."""
    import torch

    known = np.flatnonzero(m >= 0)
    if len(known):
        with torch.no_grad():
            dst[torch.from_numpy(known)] = src[torch.from_numpy(m[known])].to(dst.dtype)
    return int(len(known))
