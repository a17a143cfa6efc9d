r"""The prepared-dataset format: the contract between `prepare` and every later stage.

A prepared dataset is a directory written atomically by `unirec prepare`::

    manifest.json           see MANIFEST below
    vocab/user.parquet      raw: string, index: int32   (index 1..n_users; 0 = padding)
    vocab/item.parquet      raw: string, index: int32   (index 1..n_items; 0 = padding)
    vocab/<feature>.parquet raw: string, index: int32   for categorical and multi features
    interactions.parquet    user: int32, item: int32, timestamp: int64, [rating: float32],
                            [event: string]; cleaned, sorted by (user, timestamp), events
                            sharing a timestamp in the tie-break's order (see below)
    train.parquet           one row per user with training history:
                            user: int32, items: list<int32>, timestamps: list<int64>,
                            [ratings: list<float32>]; time-ordered
    valid.parquet           evaluation queries: user: int32, history: list<int32>
    test.parquet              (time-ordered items before the target(s)), targets: list<int32>,
                              [target_ratings: list<float32>]
    items.parquet           item: int32 (1..n_items, sorted, every item present), then one
                            column per item feature:
                              categorical -> int32 (vocab index, 0 = missing)
                              multi       -> list<int32> (vocab indices)
                              text        -> list<int32> (hashed token ids in 1..buckets-1)
                              dense       -> fixed_size_list<float32>[dim]
    item_counts.parquet     item: int32 (1..n_items), train: int64, train_valid: int64: each item's
                            occurrences in the training sequences (train rows of 2+ items;
                            train_valid: with each user's first valid target appended), what
                            sampled softmax's logQ correction needs (`prepare.train_item_counts`);
                            listed in the manifest as `item_counts: {file, sha256}`. Datasets
                            prepared without it still train (counted in one pass at start).
    users.parquet           user: int32 (1..n_users) and user features, same encodings
                            (only when user features are configured)
    items_raw.parquet       item: int32 (1..n_items), then the source item table's own scalar
                            columns (strings, numbers, dates; not lists or vectors), raw, null
                            where the table has no row for the item (only when the source has
                            an item table): what fine-tuning aligns items on

Part-file layout (`--engine ray`). Each of interactions, train, valid and test may instead be a
folder `interactions/`, `train/`, `valid/`, `test/` of `part-NNNNN.parquet` files with the same
columns: part NNNNN holds the rows of one contiguous range of user ids, ranges ascending with
NNNNN, so the parts read in name order are the single file's rows in the same order, and every
part is sorted by user on its own (training looks valid targets up by user in each part's row
groups). Split parts have row groups of at most 8192 rows. The manifest then lists them:
`parts: {name: [{file: "train/part-00000.parquet", rows: N}, ...]}` and `schema["train/"]`.
Readers take either layout (`data/dataset.py`: `split_path`, `split_files`, `read_split`).

Splits. leave_one_out: per user, by time, test target = last item, valid target = second to
last; train = everything before the valid target; test history = train + valid target;
users with fewer than 3 interactions keep all in train and get no valid/test rows.
temporal: global time cut points at the (1 - valid - test) and (1 - test) quantiles of
timestamps; train = interactions before the first cut; valid/test = one query per user with
interactions in that window: history = all of the user's earlier items, targets = the user's
items in the window.

MANIFEST (manifest.json) keys: format_version, name, created_at, source (kind, files with
sha256), config (the resolved dataset config), counts (rows after each cleaning step: raw,
dropped_null_ids, dropped_null_timestamps, dropped_duplicates, dropped_rating_filter,
after_kcore with iterations, final; users, items), schema (column -> arrow type string per
file), split (protocol and its parameters, users per split), vocab_sizes (user, item, and per
categorical/multi feature, each INCLUDING the padding index 0, i.e. max index + 1),
features (list of {name, table: items|users, kind, cardinality (vocab size incl. 0, or hash
buckets), dim (dense only), max_len (multi/text)}), versions (unirec_dist, pyarrow), and
vocab_hash (sha256 over the user and item vocab tables, used by checkpoints to refuse a
mismatched dataset).

Details fixed by the implementation (data/prepare.py, data/features.py):
- Vocab order: indices follow the sorted raw values (integer ids numerically, strings bytewise),
  so they do not depend on row order or on the engine. Raw values are stored as strings.
- Order of a user's events: timestamp, then (columns.tie_break) that column ascending, then
  source row order (split.tie_break row) or a shuffle fixed by split.seed (random: a hash of the
  seed and the source row, the same for both engines); never item id. split.order row: the
  timestamp column is not read and each event's timestamp is its source row (0-based).
  Exact duplicates (same user, timestamp, item, rating, event, tie-break value) keep the first.
- split.ordering (manifest): {order, tie_break, events_in_tied_groups (share of events sharing
  (user, timestamp) with another), largest_group, targets_tied: {valid, test} (leave-one-out:
  share of targets in such a group)}; split.repeat_rate: {valid, test}, the share of targets
  already in the user's history (temporal: of target events, history = before the window).
- vocab_hash = sha256 over, for "user" then "item": name, NUL, row count (int64 LE), the UTF-8
  byte length of every raw value in index order (int64 LE), then the concatenated raw bytes
  (`prepare.vocab_hash`).
- Text: lowercase, split on `[^\p{L}\p{N}]+`, first max_tokens non-empty tokens, each token's
  UTF-8 bytes -> 64-bit FNV-1a -> 1 + h % (buckets - 1) (`features.encode_text`); the manifest
  feature entry carries `tokenizer`. Multi cells: split on `sep` (or taken as lists), trimmed,
  empties dropped, first max_values kept. Items/users absent from the feature table get 0,
  empty lists and zero vectors. Duplicate keys in a feature table: the first row wins.
- Extra manifest keys: engine ("arrow" | "ray"), parts (the part-file layout above), tables (feature-table alignment counts: rows,
  matched, unknown_keys, duplicate_keys, missing), features[].column (the source column);
  source.files entries are {role, path, sha256, bytes} (MovieLens adds an "archive" entry with
  the source and the archive checksum); split.cut_valid/cut_test for the temporal protocol.
- temporal: train rows only for users with interactions before the first cut; a valid/test
  query's history may be empty (a user first seen inside the window).
"""
from __future__ import annotations

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAD = 0
