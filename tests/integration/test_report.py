"""`unirec report` as a person uses it: a debug run, its evaluation beside the popularity
baseline and its top-10 lists, the page opened in headless Chromium (every image loaded, no
console error, a screenshot taken), and bad input refused in one line with nothing written."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import prepared_dataset
from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/pretrain/debug.yaml")
FIGURES = {"training.png", "vs_popularity.png", "long_tail.png", "ndcg_by_history.png"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(run dir, model eval json, popularity eval json, recs.parquet) of a 3-epoch debug run."""
    tmp = tmp_path_factory.mktemp("report")
    ds = prepared_dataset(tmp / "data")
    run = tmp / "run"
    assert main(["train", "--config", DEBUG, f"data.path={ds}", f"trainer.out_dir={run}", "trainer.max_epochs=3"]) == 0
    model, pop, recs = tmp / "model.json", tmp / "pop.json", tmp / "recs.parquet"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best"), "--per-user", "--out", str(model)]) == 0
    assert main(["evaluate", "--baseline", "popularity", "--data", str(ds), "--per-user", "--out", str(pop)]) == 0
    assert main(["recommend", "--checkpoint", str(run / "checkpoints" / "best"), "--all-users",
                 "--out", str(recs)]) == 0
    return run, model, pop, recs


def _report(inputs, out: Path, *extra: str) -> int:
    run, model, pop, recs = inputs
    return main(["report", str(run), "--eval", str(model), "--eval", str(pop), "--recs", str(recs),
                 "--out", str(out), *extra])


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (.ci/run installs Debian's chromium package; "
                    "`apt-get install -y chromium`)")
    return exe


# Injected into a copy of the page (never into the report itself): records console errors and
# failed loads as they happen, and on load writes every image's natural width into the DOM,
# which --dump-dom then prints.
CHECK = """<script>
window.__errors = [];
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('error', e => window.__errors.push('load error: ' + (e.target.src || e.message)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, ok: i.complete}));
  const pre = document.createElement('pre');
  pre.id = 'unirec-check';
  pre.textContent = JSON.stringify({imgs, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def test_report_opens_in_chromium_with_every_figure(inputs, tmp_path, capsys):
    chromium = _chromium()
    out = tmp_path / "report"
    assert _report(inputs, out) == 0
    page = out / "index.html"
    assert capsys.readouterr().out.strip().endswith(f"report: {page}")
    assert {p.name for p in out.iterdir()} == FIGURES | {"index.html"}
    html = page.read_text()
    assert "Not drawn" not in html and "coverage@10" in html and "best epoch" in html

    probe = out / "probe.html"       # beside the figures, so relative paths resolve the same
    probe.write_text(html.replace("<head>", "<head>" + CHECK, 1))
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
             "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = '<pre id="unirec-check">'
    assert marker in dom.stdout, dom.stdout[-2000:]
    check = json.loads(dom.stdout.split(marker, 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert sorted(i["src"] for i in check["imgs"]) == sorted(FIGURES)
    assert all(i["ok"] and i["w"] > 0 for i in check["imgs"]), check["imgs"]
    assert check["errors"] == []
    assert "CONSOLE" not in dom.stderr or "error" not in dom.stderr.split("CONSOLE", 1)[1].lower()
    probe.unlink()

    shot = tmp_path / "screenshot.png"
    r = subprocess.run([chromium, *flags, "--window-size=1200,2600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2600, 1200)
    assert (pixels < 200).mean() > 0.02      # ink on the page: text and figures, not a blank render


def _refused(capsys, out: Path, rc: int, match: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, capsys):
    run, model, pop, recs = inputs
    out = tmp_path / "report"
    capsys.readouterr()

    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "x.txt").write_text("hello")
    _refused(capsys, out, main(["report", str(tmp_path / "notarun"), "--out", str(out)]),
             "is not a train/pretrain/finetune run")

    no_epochs = tmp_path / "no_epochs"
    shutil.copytree(run, no_epochs, symlinks=True)
    (no_epochs / "logs" / "metrics.csv").write_text("epoch,step,train/loss_step\n")
    _refused(capsys, out, main(["report", str(no_epochs), "--out", str(out)]), "no epoch was logged")

    other = tmp_path / "other.json"
    rep = json.loads(model.read_text())
    rep["dataset"]["vocab_hash"] = "0" * 64
    other.write_text(json.dumps(rep))
    _refused(capsys, out, main(["report", str(run), "--eval", str(other), "--out", str(out)]), "another dataset")

    out.mkdir()
    assert _report(inputs, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert _report(inputs, out, "--overwrite") == 0 and (out / "index.html").is_file()


def test_gini_by_hand():
    from unirec_dist.report.figures import gini

    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)      # (n - 1) / n for one item
    assert gini(np.array([1, 3])) == pytest.approx(0.25)            # |1 - 3| / (2 * 2 * mean 2)
