"""Encoding of item/user feature columns, vectorized over Arrow arrays.

Text hashing is defined here once so that serving can hash a new title exactly as `prepare` did:
lowercase (Unicode), split on runs of characters that are neither letters nor digits
(`[^\\p{L}\\p{N}]+`), keep the first `max_tokens` non-empty tokens, and map each token's UTF-8
bytes through 64-bit FNV-1a to `1 + h % (buckets - 1)` (0 stays the padding index).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.errors import DataError

TOKEN_SPLIT = r"[^\p{L}\p{N}]+"
TOKENIZER = "lower+split[^\\p{L}\\p{N}]+ fnv1a64 % (buckets-1) + 1"
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def fnv1a64(strings: pa.Array) -> np.ndarray:
    """64-bit FNV-1a of each (non-null) string's UTF-8 bytes, (N,) uint64.

    Vectorized across strings: one numpy pass per byte position (loops over the longest
    string's length, never over rows).
    """
    strings = as_array(strings).cast(pa.large_string())
    n = len(strings)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset: strings.offset + n + 1]
    data_buf = strings.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")       # longest first: active rows are a prefix
    starts_o, lengths_o = starts[order], lengths[order]
    ho = h[order]
    with np.errstate(over="ignore"):
        for k in range(int(lengths.max(initial=0))):
            m = int(np.searchsorted(-lengths_o, -k, side="left"))  # rows with length > k
            ho[:m] ^= data[starts_o[:m] + k].astype(np.uint64)
            ho[:m] *= _FNV_PRIME
    h[order] = ho
    return h


def hash_tokens(tokens: pa.Array, buckets: int) -> np.ndarray:
    """Token strings -> int32 ids in 1..buckets-1 (hashing each distinct token once)."""
    enc = as_array(pc.dictionary_encode(as_array(tokens)))
    hashed = (fnv1a64(enc.dictionary) % np.uint64(buckets - 1) + np.uint64(1)).astype(np.int32)
    return hashed[enc.indices.to_numpy(zero_copy_only=False)]


def lists_from_parents(values: pa.Array, parents: np.ndarray, n_rows: int) -> pa.ListArray:
    """Values sorted by their row (parents non-decreasing) -> list array of n_rows rows."""
    lengths = np.bincount(parents, minlength=n_rows) if len(parents) else np.zeros(n_rows, np.int64)
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def first_k(parents: np.ndarray, k: int) -> np.ndarray:
    """Mask over values (grouped by non-decreasing parents) keeping the first k of each row."""
    if len(parents) == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
    lens = np.diff(np.r_[starts, len(parents)])
    pos = np.arange(len(parents)) - np.repeat(starts, lens)
    return pos < k


def _split_flat(lists: pa.Array, n_rows: int, max_len: int) -> tuple[pa.Array, np.ndarray]:
    """Flatten a list<string> column, drop null/empty values, keep the first max_len per row."""
    lists = as_array(lists)
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.utf8_trim_whitespace(flat.cast(pa.string()))
    ok = pc.and_(pc.is_valid(flat), pc.not_equal(pc.binary_length(flat), 0)).fill_null(False)
    ok = ok.to_numpy(zero_copy_only=False)
    flat, parents = flat.filter(pa.array(ok)), parents[ok]
    keep = first_k(parents, max_len)
    return flat.filter(pa.array(keep)), parents[keep]


def tokenize(col: pa.Array | pa.ChunkedArray, max_tokens: int) -> tuple[pa.Array, np.ndarray]:
    """Text -> (tokens, parent row per token): lowercased, split on non-alphanumerics."""
    col = as_array(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):   # a list of words (RecBole token_seq)
        col = pc.binary_join(col.cast(pa.list_(pa.string())), " ")
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    lists = pc.split_pattern_regex(pc.utf8_lower(col.fill_null("")), TOKEN_SPLIT)
    return _split_flat(lists, len(col), max_tokens)


def encode_text(col: pa.Array | pa.ChunkedArray, buckets: int, max_tokens: int) -> pa.ListArray:
    """Text column -> list<int32> hashed token ids in 1..buckets-1 (first max_tokens tokens)."""
    n = len(col)
    tokens, parents = tokenize(col, max_tokens)
    ids = pa.array(hash_tokens(tokens, buckets), pa.int32()) if len(tokens) else pa.array([], pa.int32())
    return lists_from_parents(ids, parents, n)


def split_multi(col: pa.Array | pa.ChunkedArray, sep: str, max_values: int, where: str) -> tuple[pa.Array, np.ndarray]:
    """Multi-valued cells (a `sep`-joined string or a list) -> (values as string, parent rows)."""
    col = as_array(col)
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lists = col.cast(pa.list_(pa.string()))
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        lists = pc.split_pattern(col.cast(pa.string()), sep)
    elif pa.types.is_integer(t):
        lists = pc.split_pattern(col.cast(pa.string()), sep)
    else:
        raise DataError(f"{where}: a multi-valued feature must be a string or a list column, got {t}")
    return _split_flat(lists, len(col), max_values)


def dense_vectors(col: pa.Array | pa.ChunkedArray, where: str) -> pa.FixedSizeListArray:
    """List (or comma/space separated string) column -> fixed_size_list<float32>[dim]; missing rows
    become zero vectors. Rows of different lengths -> DataError."""
    col = as_array(col)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        col = pc.split_pattern_regex(pc.utf8_trim_whitespace(col), r"[,\s]+")
        t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise DataError(f"{where}: a dense feature must be a list of numbers, got {t}")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(lengths.astype(float)) if lengths.dtype.kind == "f" else np.ones(len(col), bool)
    present = col.is_valid().to_numpy(zero_copy_only=False) & valid
    if not present.any():
        raise DataError(f"{where}: dense feature is null in every row")
    lens = lengths[present].astype(np.int64)
    dim = int(lens[0])
    if dim == 0 or (lens != dim).any():
        bad = int(np.flatnonzero(present)[np.flatnonzero(lens != dim)[0]]) if (lens != dim).any() else 0
        raise DataError(f"{where}: dense vectors must all have the same length > 0; row {bad} has "
                        f"{int(lengths[bad])}, the first has {dim}")
    try:
        flat = pc.list_flatten(col.filter(pa.array(present))).cast(pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"{where}: dense values are not numbers ({str(e).splitlines()[0]})") from None
    out = np.zeros((len(col), dim), dtype=np.float32)
    out[present] = flat.fill_null(0).to_numpy(zero_copy_only=False).reshape(-1, dim)
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()), dim)
