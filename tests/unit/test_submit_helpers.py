"""launch/submit.py without a cluster: runtime_env, entrypoints, addresses, token lookup."""
from __future__ import annotations

import pytest

from launch import submit as js


def test_runtime_env_ships_the_tree_without_venv_runs_data_git(tmp_path):
    renv = js.build_runtime_env("auto", env={"A": "1"})
    assert renv["working_dir"] == str(js.repo_root())
    assert {"/.venv/", "/runs/", "/data/", "/.git/", "__pycache__/"} <= set(renv["excludes"])
    assert "pip" not in renv and renv["env_vars"]["A"] == "1"
    assert "working_dir" not in js.build_runtime_env(None)


@pytest.mark.parametrize("gitignore", [True, False], ids=["with-gitignore", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1"])
def test_uploaded_package_holds_every_module(tmp_path, gitignore):
    """Ray's own packaging (the zip `unirec submit` uploads as working_dir) of a checkout that
    also holds data/, runs/ and .venv/: every module of unirec_dist and launch is in it (an
    unanchored "data/" dropped unirec_dist/data/), and the root folders are not."""
    import shutil
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    root = js.repo_root()
    tree = tmp_path / "checkout"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("unirec_dist", "launch"):
        shutil.copytree(root / pkg, tree / pkg, ignore=skip)
    shutil.copy(root / ".gitignore", tree / ".gitignore")
    for junk in ("data/prepared/ml-1m/part-0.parquet", "runs/demo/x.bin", ".venv/bin/python", "dist/x.whl"):
        (tree / junk).parent.mkdir(parents=True, exist_ok=True)
        (tree / junk).write_text("x")
    zip_path = tmp_path / "pkg.zip"
    create_package(str(tree), zip_path, include_gitignore=gitignore, excludes=js.build_runtime_env(tree)["excludes"])
    names = set(zipfile.ZipFile(zip_path).namelist())
    modules = {p.relative_to(root).as_posix() for pkg in ("unirec_dist", "launch") for p in (root / pkg).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert "unirec_dist/data/prepare.py" in modules
    assert modules - names == set()
    assert not [n for n in names if n.split("/")[0] in ("data", "runs", ".venv", "dist")]


def test_runtime_env_pip_extras_and_refused_stack(tmp_path):
    req = tmp_path / "extra.txt"
    req.write_text("# extras\nrich==13.7.1\n")
    assert js.build_runtime_env(None, pip=["tqdm"], requirements=str(req))["pip"]["packages"] == ["tqdm", "rich==13.7.1"]
    for pkg in ("torchrec==1.8.0", "torch>=2.13", "fbgemm_gpu"):
        with pytest.raises(js.JobsError, match="baked into the cluster image"):
            js.build_runtime_env(None, pip=[pkg])


def test_entrypoints():
    assert js.entrypoint_for(["pretrain", "--config", "a b.yaml", "x=1"]) == \
        "python -m launch.pretrain_job --config 'a b.yaml' x=1"
    assert js.entrypoint_for(["evaluate", "--checkpoint", "c"]).startswith("python -m unirec_dist evaluate")


def test_addresses(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert js.resolve_address() == "http://127.0.0.1:8265"
    assert js.resolve_address("10.0.0.1:8265/") == "http://10.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://head:443")
    assert js.resolve_address() == "https://head:443"
    for bad in ("ray://head:10001", "auto"):
        with pytest.raises(js.JobsError, match="not a Jobs API address"):
            js.resolve_address(bad)


def test_token_lookup_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert js.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert js.find_token() == "home"
    (tmp_path / "t").write_text("path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert js.find_token() == "path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert js.find_token() == "env"


def test_inner_config_is_checked_where_this_machine_sees_it(tmp_path):
    """A relative --config is the uploaded tree's (checked); without an upload it is the cluster
    image's and a dataset on storage this machine does not mount is left to the job."""
    from unirec_dist.errors import UnirecError

    root = js.repo_root()
    cmd = ["pretrain", "--config", "configs/pretrain/ml-1m-sasrec.yaml", "data.path=/not/mounted/here"]
    js.check_inner_config(cmd, root)                      # dim 50 loads; the dataset is not visible here
    js.check_inner_config(["pretrain", "--config", "/opt/unirec/configs/x.yaml"], None)     # the image's file
    js.check_inner_config(["pretrain", "--config", "configs/x.yaml", "data.path=rel"], None)  # the image's tree
    with pytest.raises(UnirecError, match="no such file in the uploaded working dir"):
        js.check_inner_config(["pretrain", "--config", "configs/x.yaml"], root)
    with pytest.raises(UnirecError, match=r"data.path=rel is relative"):
        js.check_inner_config([*cmd[:3], "data.path=rel"], root)
    with pytest.raises(UnirecError, match="manifest.json"):
        js.check_inner_config([*cmd[:3], f"data.path={tmp_path}"], root)
