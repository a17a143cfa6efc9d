"""`unirec demo --out DIR` replaces only a folder an earlier demo made: a user's folder is never
deleted (one line, exit 2, contents intact)."""
from __future__ import annotations

from tests.reliability.conftest import one_error, run_cli


def test_demo_never_deletes_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    rc, _, err = run_cli(capsys, "demo", "--out", mine)
    one_error(rc, err, str(mine), "not made by `unirec demo`")
    assert (mine / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]


def test_demo_refuses_a_file_as_out(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    rc, _, err = run_cli(capsys, "demo", "--out", f)
    one_error(rc, err, "not made by `unirec demo`")
    assert f.read_text() == "keep"
