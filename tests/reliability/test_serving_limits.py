"""Serving under hostile or careless use, on a bundle exported by the real `unirec export --ann hnsw`.

- the bundle's prebuilt HNSW index is loaded (not rebuilt) when its graph matches, and the log
  and /metadata say which was used;
- a body over the cap (default 1 MiB) is answered 413 before it is parsed, by Content-Length or
  while a chunked body streams in;
- /metadata tells a client what it needs and nothing of the training machine (no paths, no config).
"""
from __future__ import annotations

import json
import select
import signal
import socket
import time

import pytest

from tests.reliability.conftest import start_cli

TEN_MILLION = 10_000_000


@pytest.fixture(scope="module")
def server(bundle):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import ServeConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    cfg = ServeConfig(bundle=str(bundle))
    rec = Recommender.from_bundle(bundle, **cfg.recommender_options())
    with serve_in_thread(create_app(rec, max_body_bytes=cfg.max_body_bytes)) as url:
        yield url, rec


def _exchange(url: str, head: bytes, chunks) -> tuple[int, dict]:
    """Send `head` then the body `chunks` until the server answers; (status, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        for chunk in chunks:
            if select.select([s], [], [], 0)[0]:
                break                     # answered already: stop sending
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            got = s.recv(65536)
            if not got:
                break
            data += got
    head_, body = data.split(b"\r\n\r\n", 1)
    return int(head_.split()[1]), json.loads(body or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def _history_body(n: int) -> bytes:
    return b'{"history": [' + b'"1",' * (n - 1) + b'"1"], "k": 5}'


def _pieces(body: bytes, size: int = 65536):
    return (body[i:i + size] for i in range(0, len(body), size))


def test_ten_million_item_history_is_413_by_content_length(server):
    url, _ = server
    body = _history_body(TEN_MILLION)
    head = (f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    status, detail = _exchange(url, head, _pieces(body))
    assert status == 413 and "larger than 1048576 bytes" in detail["detail"]


def test_chunked_body_over_the_cap_is_413_while_streaming(server):
    url, _ = server
    body = _history_body(TEN_MILLION // 10)
    head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in _pieces(body))
    status, detail = _exchange(url, head, chunks)
    assert status == 413 and "larger than" in detail["detail"], (status, detail)


def test_server_still_answers_after_refusals(server):
    import urllib.request

    url, rec = server
    user = rec.users_vocab.raw(1)
    req = urllib.request.Request(f"{url}/recommend", data=json.dumps({"user_id": user, "k": 3}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and len(json.loads(r.read())["items"]) == 3


@pytest.mark.parametrize("cap, n, status", [(2048, 1000, 413), (2048, 50, 200)])
def test_body_cap_is_configurable(bundle, cap, n, status):
    from unirec_dist.config.loader import load_config
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import ServeConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    cfg = load_config(ServeConfig, None, [f"bundle={bundle}", f"max_body_bytes={cap}"])
    rec = Recommender.from_bundle(bundle, **cfg.recommender_options())
    item = rec.items_vocab.raw(1)
    body = json.dumps({"history": [item] * n, "k": 2}).encode()
    with serve_in_thread(create_app(rec, max_body_bytes=cfg.max_body_bytes)) as url:
        head = (f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        got, _ = _exchange(url, head, [body])
    assert got == status


def _strings(x):
    if isinstance(x, dict):
        for k, v in x.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)
    elif isinstance(x, str):
        yield x


def test_metadata_has_what_a_client_needs_and_no_paths(server, bundle, dataset, checkpoint):
    import urllib.request

    url, rec = server
    with urllib.request.urlopen(f"{url}/metadata", timeout=30) as r:
        m = json.loads(r.read())
    assert set(m) == {"model", "vocab_sizes", "counts", "index", "limits", "explain_methods", "versions",
                      "display_fields"}
    assert m["model"]["dim"] == rec.items.shape[1] and m["counts"]["items"] == len(rec.items_vocab)
    assert m["versions"]["unirec_dist"]
    # the exported manifest names the checkpoint and dataset folders: none of it is served
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert str(dataset) in json.dumps(manifest)
    for s in _strings(m):
        assert "/" not in s, s
    assert "config" not in json.dumps(m)


@pytest.mark.parametrize("hnsw, source", [
    (None, "bundle"),                                           # the serve default
    ({"M": 8, "ef_construction": 40, "ef_search": 64}, "bundle"),   # the graph it was built with
    ({"M": 12, "ef_construction": 40, "ef_search": 64}, "built"),   # another graph
])
def test_prebuilt_index_is_used_when_its_graph_matches(bundle, hnsw, source):
    from unirec_dist.serving.config import HNSWConfig, ServeConfig
    from unirec_dist.serving.recommender import Recommender

    cfg = ServeConfig(bundle=str(bundle), index="hnsw", hnsw=HNSWConfig(**hnsw) if hnsw else None)
    rec = Recommender.from_bundle(bundle, **cfg.recommender_options())
    assert rec.index_source == source
    assert rec.metadata()["index"]["source"] == source
    assert rec.index.params()["M"] == (hnsw or {"M": 8})["M"]
    if hnsw:
        assert rec.index.params()["ef_search"] == 64


@pytest.mark.slow
def test_serve_cli_says_it_loaded_the_prebuilt_index_and_ends_on_sigterm(bundle):
    import urllib.request

    proc = start_cli("serve", "--bundle", bundle, "--index", "hnsw", "--port", "0")
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
        assert any("the bundle's prebuilt index" in ln for ln in lines), lines
        url = lines[-1].split(" on ")[1].split()[0]
        with urllib.request.urlopen(f"{url}/metadata", timeout=30) as r:
            assert json.loads(r.read())["index"]["source"] == "bundle"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


# -- bundle integrity ---------------------------------------------------------------------------
def _files_of(bundle) -> list[str]:
    return sorted(json.loads((bundle / "manifest.json").read_text())["files"])


def test_every_bundle_file_is_listed_with_its_digest(bundle):
    from unirec_dist.serving import bundle as B

    names = _files_of(bundle)
    for required in (B.ITEMS, B.ITEM_VOCAB, B.USER_VOCAB, B.HISTORIES, B.CONFIG):
        assert required in names


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_bundle_is_one_line_before_anything_loads(bundle, tmp_path, capsys, damage):
    """A bundle file changed after export (one flipped byte loads silently as other numbers)
    is refused by explain/serve-side loading with one line naming the file."""
    import shutil

    from tests.reliability.conftest import one_error, run_cli
    from unirec_dist.serving import bundle as B

    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad)
    f = bad / B.ITEMS
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) - 5] ^= 0xFF          # inside the tensor bytes, past the safetensors header
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "explain", "--bundle", bad, "--user", "1", "-k", "3")
    one_error(rc, err, B.ITEMS, "sha256")
