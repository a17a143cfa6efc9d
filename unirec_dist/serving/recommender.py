"""`Recommender`: a trained model, its item vectors and vocabularies, answering top-K queries in raw
ids. The one serving object behind the Python API, `unirec recommend/explain --bundle`, the HTTP
app and the Ray Serve deployment.

    rec = Recommender.from_bundle("runs/demo/bundle")
    rec.recommend(user_id="42", k=10)                      # a known user: their full history
    rec.recommend(history=["1193", "661", "914"], k=10)    # a live session, raw item ids
    rec.explain(user_id="42", k=5)                         # + which history items mattered
    rec.recommend_many([Query(user_id="42"), Query(history=["1193"], k=5)])   # one batch

Queries are encoded by the model (`Retriever.query_embeddings`); candidates are scored against
the precomputed (N + 1, D) item matrix, exactly (`metrics.topk`) or with an HNSW index.
Items already in the history are excluded unless `exclude_seen=False`. Answers carry each item's
display fields (`display`: title, genres, ...) when the bundle has them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.errors import UnirecError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_K = 1000
DEFAULT_MAX_HISTORY = 2048
RECALL_K = 10
FUTURE_SLACK_S = 86_400     # a timestamp more than a day past the server's clock is refused


# the bundle manifest's model entries a client may see (no paths, no training config)
METADATA_MODEL_KEYS = ("builder", "dim", "class", "encoder", "max_len", "name")


def _bundle_index(path: Path, manifest: dict[str, Any], n_items: int, hnsw: dict[str, Any] | None,
                  ef_search: int | None) -> tuple[Any, dict[str, Any] | None]:
    """(the bundle's prebuilt HNSW index or None, the parameters to build one with otherwise).

    The prebuilt index is used when there is one and `hnsw` is None (no parameters asked for) or
    asks for the graph it was built with (M, ef_construction); ef_search is a search-time setting
    and applies to either."""
    from unirec_dist.serving.index import HNSWIndex

    stored = manifest.get("ann") or {}
    have = stored.get("kind") == "hnsw" and (path / str(stored.get("file"))).is_file()
    graph = ("M", "ef_construction")
    if have and (hnsw is None or all(int(hnsw[k]) == int(stored.get(k, -1)) for k in graph)):
        breadth = ef_search or (hnsw or {}).get("ef_search")
        ann = HNSWIndex.load(path / stored["file"], n_items, stored, breadth)
        log.info("hnsw: using the bundle's prebuilt index (M=%s, ef_construction=%s)", stored.get("M"),
                 stored.get("ef_construction"))
        return ann, None
    if have:
        assert hnsw is not None     # without asked-for parameters the stored index was used above
        log.info("hnsw: the bundle's index has M=%s, ef_construction=%s but M=%s, ef_construction=%s was "
                 "asked for: building a new one", stored.get("M"), stored.get("ef_construction"),
                 hnsw["M"], hnsw["ef_construction"])
    params = dict(hnsw or {})
    if ef_search is not None:
        params["ef_search"] = ef_search
    return None, params


class RequestError(UnirecError):
    """A query the Recommender cannot answer as asked (maps to HTTP 422)."""

    status = 422


class UnknownUserError(RequestError):
    """A user id that is not in the bundle's vocabulary (HTTP 404)."""

    status = 404


@dataclass
class Recommendation:
    item: str
    score: float
    rank: int
    display: dict[str, str] | None = None   # title, genres, ... when the bundle has them


@dataclass
class Query:
    """One /recommend question: a known `user_id` or a live `history` (raw ids, oldest first)."""
    user_id: Any = None
    history: list[Any] | None = None
    k: int = 10
    exclude_seen: bool = True
    timestamps: list[Any] | None = None     # with history: seconds since 1970 (see resolve_times)
    at: Any = None                          # query time, default now


@dataclass
class Ranked:
    """The answer to one Query: its items, best first, and the length of the history used."""
    items: list[Recommendation]
    history_length: int


@dataclass
class Contribution:
    item: str
    position: int   # 0-based position in the full history, oldest first
    weight: float
    display: dict[str, str] | None = None


@dataclass
class ItemExplanation:
    item: str
    score: float
    rank: int
    contributions: list[Contribution] = field(default_factory=list)
    display: dict[str, str] | None = None


@dataclass
class Explanation:
    method: str
    per_item: bool
    history_length: int
    items: list[ItemExplanation]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Vocab:
    """raw id (string) <-> index (1..n; 0 = padding)."""

    def __init__(self, table: pa.Table, name: str) -> None:
        raw = table["raw"].combine_chunks().cast(pa.string())
        index = table["index"].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
        n = int(index.max()) if len(index) else 0
        self.name = name
        self.size = n + 1  # incl. padding
        self._to_raw: list[str | None] = [None] * (n + 1)
        raws = raw.to_pylist()
        for r, i in zip(raws, index.tolist()):
            self._to_raw[i] = r
        self._to_index = dict(zip(raws, index.tolist()))

    def __len__(self) -> int:
        return self.size - 1

    def index(self, raw: Any) -> int | None:
        return self._to_index.get(_raw_key(raw))

    def raw(self, index: int) -> str:
        return self._to_raw[index]  # type: ignore[return-value]


def _seconds(value: Any, name: str, now: int) -> int:
    """A request's time value -> int seconds since 1970 (fractions dropped), or RequestError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number of seconds since 1970, got {str(value)[:32]!r}")
    if value < 0:
        raise RequestError(f"{name} ({value}) is before 1970; give seconds since 1970")
    if value > now + FUTURE_SLACK_S:
        raise RequestError(f"{name} ({value}) is in the future (server time {now}); give seconds since 1970, "
                           "not milliseconds")
    return int(value)


def _raw_key(raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise RequestError(f"ids must be strings or integers, got {type(raw).__name__}")
    return str(raw)


class Recommender:
    """Top-K recommendations and explanations in raw ids for known users or live histories.

    model: a Retriever (eval mode); item_matrix: (N + 1, D), default `model.item_embeddings()`;
    item_vocab/user_vocab: (raw, index) tables; histories: (user int32, items list<int32>) with
    each known user's full sequence; index: "exact" or "hnsw"; display: item + display field
    columns (serving/display.py) shown beside raw ids, or None.
    """

    def __init__(
        self,
        model: Any,
        item_vocab: pa.Table,
        user_vocab: pa.Table | None = None,
        histories: pa.Table | None = None,
        *,
        item_matrix: "torch.Tensor | None" = None,
        index: str = "exact",
        manifest: dict[str, Any] | None = None,
        max_k: int = DEFAULT_MAX_K,
        max_history: int = DEFAULT_MAX_HISTORY,
        hnsw: dict[str, Any] | None = None,
        ann: Any = None,
        recall_queries: int = 256,
        display: pa.Table | None = None,
    ) -> None:
        import torch

        from unirec_dist.serving.display import ItemDisplay
        from unirec_dist.serving.index import ExactIndex, HNSWIndex, recall_at_k

        self.model = model.eval() if hasattr(model, "eval") else model
        # an encoder with a time bias reads event timestamps and the query time
        self.uses_times = bool(getattr(getattr(model, "encoder", None), "uses_times", False))
        if item_matrix is None:
            with torch.inference_mode():
                item_matrix = model.item_embeddings()
        self.items = item_matrix.detach().to("cpu", torch.float32).contiguous()
        self.items_vocab = Vocab(item_vocab, "item")
        if self.items.shape[0] != self.items_vocab.size:
            raise UnirecError(
                f"item matrix has {self.items.shape[0] - 1} items but the item vocab has {len(self.items_vocab)}"
            )
        self.display = ItemDisplay(display, len(self.items_vocab))
        self.users_vocab = Vocab(user_vocab if user_vocab is not None else
                                 pa.table({"raw": pa.array([], pa.string()), "index": pa.array([], pa.int32())}), "user")
        self.max_len = int(getattr(model, "max_len", 0) or max_history)
        self.manifest = manifest or {}
        self.max_k = max(1, min(int(max_k), len(self.items_vocab)))
        self.max_history = int(max_history)
        self._load_histories(histories)
        self.exact = ExactIndex(self.items)
        self.index_recall: float | None = None
        # The first query pays one-off costs (lazy imports, kernel selection: seconds); pay them
        # at load time, not in the first request.
        self._warm_query = self._sample_queries(1)
        if index == "exact":
            self.index: ExactIndex | HNSWIndex = self.exact
        elif index == "hnsw":
            t0 = time.perf_counter()
            self.index = ann if ann is not None else HNSWIndex.build(self.items, **(hnsw or {}))
            self._index_source = "bundle" if ann is not None else "built"
            build_s = time.perf_counter() - t0
            q = self._sample_queries(recall_queries)
            self.index_recall = recall_at_k(self.index, self.exact, q, RECALL_K)
            log.info("hnsw index (%s) ready in %.1fs (%s); recall@%d vs exact = %.4f over %d queries",
                     "the bundle's prebuilt" if ann is not None else "built at start-up", build_s,
                     self.index.params(), RECALL_K, self.index_recall, q.shape[0])
        else:
            raise UnirecError(f"index must be 'exact' or 'hnsw', got {index!r}")
        self.index.search(self._warm_query, min(10, self.max_k))

    # ---- loading

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, index: str = "exact", *, ef_search: int | None = None,
                    hnsw: dict[str, Any] | None = None, **kwargs: Any) -> "Recommender":
        """Load a bundle written by `unirec export` (no torch.distributed, no sharding, no pickle)."""
        import pyarrow.parquet as pq

        from unirec_dist.serving import bundle as B

        path = Path(path)
        manifest = B.read_bundle_manifest(path)
        B.verify_bundle(path, manifest)
        items = B.load_tensors(path / B.ITEMS).get("items")
        if items is None:
            raise UnirecError(f"bundle {path}: {B.ITEMS} has no 'items' tensor")
        config = json.loads((path / B.CONFIG).read_text())
        builder = (manifest.get("model") or {}).get("builder")
        if builder not in B.MODEL_BUILDERS:
            raise UnirecError(f"bundle {path}: unknown model builder {builder!r}")
        model = B.MODEL_BUILDERS[builder](config, manifest, path, items)
        ann = None
        if index == "hnsw":
            ann, hnsw = _bundle_index(path, manifest, int(items.shape[0]) - 1, hnsw, ef_search)
        shown = manifest.get("display") or {}
        display = pq.read_table(path / shown["file"]) if shown.get("file") else None
        return cls(
            model,
            pq.read_table(path / B.ITEM_VOCAB),
            pq.read_table(path / B.USER_VOCAB),
            pq.read_table(path / B.HISTORIES),
            item_matrix=items,
            index=index,
            manifest=manifest,
            hnsw=hnsw,
            ann=ann,
            display=display,
            **kwargs,
        )

    @property
    def index_source(self) -> str | None:
        """hnsw: "bundle" (the bundle's prebuilt index) or "built" (at start-up); exact: None."""
        return None if self.index is self.exact else self._index_source

    def _load_histories(self, histories: pa.Table | None) -> None:
        n_users = self.users_vocab.size
        self._hist_row = np.full(n_users, -1, dtype=np.int64)
        self._hist_times: np.ndarray | None = None
        if histories is None or histories.num_rows == 0:
            self._hist_offsets = np.zeros(1, dtype=np.int64)
            self._hist_values = np.zeros(0, dtype=np.int64)
            return
        if "timestamps" in histories.column_names:
            self._hist_times = pc.list_flatten(histories["timestamps"].combine_chunks()).to_numpy(
                zero_copy_only=False).astype(np.int64)
        elif self.uses_times:
            raise UnirecError("the model reads timestamps (a time bias) but the bundle's histories have none; "
                              "export it again")
        lists = histories["items"].combine_chunks()
        users = histories["user"].combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64)
        if users.max(initial=0) >= n_users or users.min(initial=1) < 1:
            raise UnirecError("histories reference users outside the user vocab")
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        self._hist_values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        self._hist_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._hist_row[users] = np.arange(len(users))

    def _sample_queries(self, n: int) -> "torch.Tensor":
        """Query vectors of up to n known users (or random history-like queries without users)."""

        known = np.flatnonzero(self._hist_row >= 0)[:n]
        rows = [int(u) for u in known if len(self._user_history(int(u)))]
        hists = [self._user_history(u) for u in rows]
        times = [self.resolve_times(u, h, None, None) for u, h in zip(rows, hists)]
        if not hists:
            rng = np.random.default_rng(0)
            hists = [rng.integers(1, len(self.items_vocab) + 1, size=5) for _ in range(n)]
            times = [np.zeros(6, dtype=np.int64) for _ in range(n)]
            rows = [0] * len(hists)
        return self._encode(rows, hists, times if self.uses_times else None)

    # ---- queries

    def _user_history(self, user: int) -> np.ndarray:
        r = self._hist_row[user]
        if r < 0:
            return np.zeros(0, dtype=np.int64)
        return self._hist_values[self._hist_offsets[r]: self._hist_offsets[r + 1]]

    def resolve(self, user_id: Any = None, history: list[Any] | None = None) -> tuple[int, np.ndarray]:
        """(user index or 0, history item ids (H,) oldest first) for a known user or a live history."""
        if (user_id is None) == (history is None):
            raise RequestError("give exactly one of user_id (a known user) or history (raw item ids)")
        if user_id is not None:
            u = self.users_vocab.index(user_id)
            if u is None:
                raise UnknownUserError(f"unknown user_id {str(user_id)[:64]!r}")
            return u, self._user_history(u)
        if not isinstance(history, (list, tuple)):
            raise RequestError("history must be a list of raw item ids")
        if len(history) == 0:
            raise RequestError("history is empty; give at least one item id")
        if len(history) > self.max_history:
            raise RequestError(f"history has {len(history)} items; at most {self.max_history} are accepted")
        idx = [self.items_vocab.index(h) for h in history]
        unknown = [str(h)[:64] for h, i in zip(history, idx) if i is None]
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise RequestError(f"unknown item id(s) in history: {', '.join(map(repr, unknown[:3]))}{more}")
        return 0, np.asarray(idx, dtype=np.int64)

    def resolve_times(self, user: int, hist: np.ndarray, timestamps: list[Any] | None,
                      at: Any = None) -> np.ndarray:
        """(H + 1,) int64 seconds: the history's event times, then the query time `at` (default
        now; for a known user never before their last event). A live history's `timestamps`
        (seconds since 1970, oldest first, one per item) are checked: numbers (fractions of a
        second dropped), not before 1970, not more than a day past the server's clock, never
        going backwards, `at` not before the last one; else RequestError (HTTP 422). A model
        without a time bias checks them the same way and does not read them."""
        now = int(time.time())
        query = None if at is None else _seconds(at, "at", now)
        if user and timestamps is not None:
            raise RequestError("timestamps go with a live history, not with user_id (a known user's are stored)")
        if timestamps is not None:
            if not isinstance(timestamps, (list, tuple)):
                raise RequestError("timestamps must be a list of seconds since 1970, one per history item")
            if len(timestamps) != len(hist):
                raise RequestError(f"timestamps has {len(timestamps)} values but history has {len(hist)} items")
            ts = np.asarray([_seconds(t, f"timestamps[{i}]", now) for i, t in enumerate(timestamps)], np.int64)
            back = np.flatnonzero(np.diff(ts) < 0)
            if len(back):
                i = int(back[0]) + 1
                raise RequestError(f"timestamps go backwards at position {i} ({ts[i]} < {ts[i - 1]}); "
                                   "give the history oldest first")
        elif user and self._hist_times is not None:
            r = self._hist_row[user]
            ts = self._hist_times[self._hist_offsets[r]: self._hist_offsets[r + 1]] if r >= 0 else np.zeros(0, np.int64)
        elif self.uses_times and len(hist):
            raise RequestError("this model reads event times: give timestamps (seconds since 1970, one per "
                               "history item, oldest first)")
        else:
            ts = np.zeros(len(hist), np.int64)
        last = int(ts[-1]) if len(ts) else 0
        if query is None:
            query = max(now, last)      # a stored history may run ahead of this server's clock
        elif query < last:
            raise RequestError(f"at ({query}) is before the history's last timestamp ({last})")
        return np.append(ts, np.int64(query))

    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise RequestError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= self.max_k:
            raise RequestError(f"k must be between 1 and {self.max_k}, got {k}")
        return int(k)

    def _encode(self, users: list[int], histories: list[np.ndarray],
                times: list[np.ndarray] | None = None) -> "torch.Tensor":
        """(B, D) query vectors; each history is cut to the model's last `max_len` items. times:
        per history (H + 1,) event times then the query time (`resolve_times`), for a model
        that reads them."""
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        from unirec_dist.data.batch import ITEM_KEY, SeqBatch

        kept = [h[-self.max_len:] if self.max_len else h for h in histories]
        values = torch.from_numpy(np.concatenate(kept).astype(np.int64)) if kept else torch.zeros(0, dtype=torch.long)
        lengths = torch.tensor([len(h) for h in kept], dtype=torch.long)
        seq = KeyedJaggedTensor.from_lengths_sync(keys=[ITEM_KEY], values=values, lengths=lengths)
        batch = SeqBatch(users=torch.tensor(users, dtype=torch.long), seq=seq)
        if times is not None and self.uses_times:
            kept_t = [t[:-1][len(t) - 1 - len(h):] for t, h in zip(times, kept)]
            batch.extra["timestamps"] = torch.from_numpy(np.concatenate(kept_t).astype(np.int64)) if kept_t \
                else torch.zeros(0, dtype=torch.long)
            batch.extra["query_time"] = torch.tensor([int(t[-1]) for t in times], dtype=torch.long)
        with torch.inference_mode():
            return self.model.query_embeddings(batch).float()

    def _top(self, user: int, hist: np.ndarray, k: int, exclude_seen: bool,
             times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._encode([user], [hist], None if times is None else [times])
        scores, ids = self.index.search(q, k, [hist] if exclude_seen else None)
        keep = ids[0] > 0
        return scores[0][keep], ids[0][keep]

    def recommend(self, user_id: Any = None, history: list[Any] | None = None, k: int = 10,
                  exclude_seen: bool = True, timestamps: list[Any] | None = None,
                  at: Any = None) -> list[Recommendation]:
        """Top-k items (raw ids, best first) for a known `user_id` or a live `history` of raw item
        ids (oldest first), with its `timestamps` and the query time `at` (see `resolve_times`).
        Fewer than k come back only if the catalogue runs out."""
        answer = self.recommend_many([Query(user_id, history, k, exclude_seen, timestamps, at)])[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer.items

    def recommend_many(self, queries: Sequence[Query]) -> list[Ranked | RequestError]:
        """Answer several queries with ONE encoder pass and one top-K pass per distinct k (the
        micro-batching path of the HTTP app). Each entry is the query's `Ranked` answer or the
        RequestError it alone raised: a bad query never fails the others. An answer does not
        depend on the batch it came in (the top-K's tie rule is deterministic, and an HNSW
        search sees the same k and efSearch as alone); the encoder's padded batch can move a
        score in its last float bits, never the order of distinct scores."""
        out: list[Ranked | RequestError | None] = [None] * len(queries)
        rows: list[tuple[int, int, int, np.ndarray, bool]] = []
        times: list[np.ndarray] = []        # per row: event times, then the query time
        for i, q in enumerate(queries):
            try:
                k = self._check_k(q.k)
                user, hist = self.resolve(q.user_id, q.history)
                times.append(self.resolve_times(user, hist, q.timestamps, q.at))
            except RequestError as e:
                out[i] = e
                continue
            rows.append((i, k, user, hist, bool(q.exclude_seen)))
        if rows:
            vectors = self._encode([r[2] for r in rows], [r[3] for r in rows], times)
            for k in sorted({r[1] for r in rows}):
                group = [j for j, r in enumerate(rows) if r[1] == k]
                exclude = [rows[j][3] if rows[j][4] else rows[j][3][:0] for j in group]
                scores, ids = self.index.search(vectors[group], k, exclude if any(len(e) for e in exclude) else None)
                for n, j in enumerate(group):
                    keep = ids[n] > 0
                    out[rows[j][0]] = Ranked(
                        [Recommendation(self.items_vocab.raw(int(i)), float(s), r + 1, self.display(int(i)))
                         for r, (s, i) in enumerate(zip(scores[n][keep], ids[n][keep]))],
                        int(len(rows[j][3])))
        return out  # type: ignore[return-value]

    def explain(self, user_id: Any = None, history: list[Any] | None = None, k: int = 10,
                exclude_seen: bool = True, items: list[Any] | None = None, top: int = 5,
                method: str = "auto", timestamps: list[Any] | None = None, at: Any = None) -> Explanation:
        """For each recommended item (or each of `items`), the `top` history items with the largest
        weights under `method` (see `unirec_dist.serving.explain`)."""
        from unirec_dist.serving.explain import attribute, resolve_method

        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 100:
            raise RequestError(f"top must be an integer between 1 and 100, got {top!r}")
        method = resolve_method(self.model, method)
        user, hist = self.resolve(user_id, history)
        if len(hist) == 0:
            raise RequestError(f"user {str(user_id)[:64]!r} has no known history to explain")
        times = self.resolve_times(user, hist, timestamps, at)
        if items is not None:
            if not isinstance(items, (list, tuple)) or not 1 <= len(items) <= self.max_k:
                raise RequestError(f"items must be a list of 1 to {self.max_k} raw item ids")
            tgt = [self.items_vocab.index(i) for i in items]
            unknown = [str(i)[:64] for i, t in zip(items, tgt) if t is None]
            if unknown:
                raise RequestError(f"unknown item id(s): {', '.join(map(repr, unknown[:3]))}")
            ids = np.asarray(tgt, dtype=np.int64)
            q = self._encode([user], [hist], [times])
            scores = (q @ self.items[ids].T)[0].numpy()
        else:
            k = self._check_k(k)
            scores, ids = self._top(user, hist, k, exclude_seen, times)
        att = attribute(self.model, self.items, hist, user, ids, method, times if self.uses_times else None)
        out = []
        for r, (s, i) in enumerate(zip(scores, ids)):
            w = att.weights[r]
            order = np.argsort(-w, kind="stable")[:top]
            contrib = [Contribution(self.items_vocab.raw(int(hist[att.positions[j]])), int(att.positions[j]),
                                    float(w[j]), self.display(int(hist[att.positions[j]]))) for j in order]
            out.append(ItemExplanation(self.items_vocab.raw(int(i)), float(s), r + 1, contrib, self.display(int(i))))
        return Explanation(method=method, per_item=att.per_item, history_length=int(len(hist)), items=out)

    def examples(self) -> list[dict[str, Any]]:
        """Example requests for the OpenAPI schema: a known user and a short live history."""
        out: list[dict[str, Any]] = []
        users = np.flatnonzero(self._hist_row >= 0)
        if len(users):
            out.append({"user_id": self.users_vocab.raw(int(users[0])), "k": 10})
        n = min(3, len(self.items_vocab))
        if n:
            out.append({"history": [self.items_vocab.raw(i) for i in range(1, n + 1)], "k": 10, "exclude_seen": True})
        return out

    def known_history(self, user_id: Any) -> list[str]:
        """A known user's full history as raw item ids, oldest first."""
        _, hist = self.resolve(user_id=user_id)
        return [self.items_vocab.raw(int(i)) for i in hist]

    def metadata(self) -> dict[str, Any]:
        """What a client needs (model, dims, counts, index, limits, versions); no file system
        paths and no training config (the bundle's manifest holds those for operators)."""
        from unirec_dist import __version__
        from unirec_dist.serving.explain import has_attention

        m = self.manifest
        model = {k: v for k, v in (m.get("model") or {}).items() if k in METADATA_MODEL_KEYS}
        return {
            "model": {**model, "class": type(self.model).__name__, "max_len": self.max_len,
                      "dim": int(self.items.shape[1])},
            "vocab_sizes": {"item": self.items_vocab.size, "user": self.users_vocab.size},
            "counts": {"items": len(self.items_vocab), "users": len(self.users_vocab)},
            "index": {"kind": self.index.kind, **self.index.params(),
                      f"recall_at_{RECALL_K}": self.index_recall, "source": self.index_source},
            "limits": {"max_k": self.max_k, "max_history": self.max_history},
            "display_fields": self.display.fields,
            "explain_methods": ["occlusion", "similarity"] + (["attention"] if has_attention(self.model) else []),
            "versions": {"unirec_dist": __version__, "bundle_format": m.get("format_version"),
                         "bundle_created_at": m.get("created_at")},
        }
