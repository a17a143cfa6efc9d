"""pretrain's placement check (distributed.placement_strategy against the cluster's nodes, before
any worker starts), the one line that ends a run whose workers failed past max_failures, and
the link-or-copy that publishes the final checkpoint. End to end on a two-node cluster: tests/integration/test_node_loss.py."""
from __future__ import annotations

import pytest

from unirec_dist.config.distributed import DistributedSection, load_pretrain_config
from unirec_dist.errors import ConfigError


def _node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


@pytest.fixture
def cluster(monkeypatch):
    """Set the nodes `ray.nodes()` and `ray.cluster_resources()` describe (no Ray started)."""
    import ray

    def set_nodes(*nodes: dict) -> None:
        live = [n for n in nodes if n["Alive"]]
        total: dict[str, float] = {}
        for n in live:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
        monkeypatch.setattr(ray, "nodes", lambda: list(nodes))
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(total))

    return set_nodes


@pytest.mark.parametrize("strategy, nodes, message", [
    ("STRICT_SPREAD", [_node(2)], "distributed.workers 2 with distributed.placement_strategy STRICT_SPREAD needs 2 nodes with "
                                  "1 CPU each but the Ray cluster has 1"),
    # a dead node's CPUs do not count, nor does a node too small for one worker
    ("STRICT_SPREAD", [_node(2), _node(1, alive=False), _node(0)], "needs 2 nodes with 1 CPU each but the Ray cluster has 1"),
    ("STRICT_PACK", [_node(1), _node(1)], "distributed.workers 2 with distributed.placement_strategy STRICT_PACK needs one node "
                                          "with 2 CPUs but the Ray cluster has none"),
])
def test_strict_placement_the_cluster_cannot_satisfy_is_refused(cluster, strategy, nodes, message):
    from unirec_dist.training.pretrain import ClusterError, wait_for_resources

    cluster(*nodes)
    with pytest.raises(ClusterError) as e:
        wait_for_resources(2, 1, False, 0, placement_strategy=strategy)
    assert message in str(e.value)


@pytest.mark.parametrize("strategy, nodes", [
    ("PACK", [_node(1), _node(1)]),
    ("SPREAD", [_node(2)]),                 # SPREAD prefers, does not require, a node per worker
    ("STRICT_SPREAD", [_node(1), _node(1)]),
    ("STRICT_PACK", [_node(2), _node(1)]),
])
def test_placement_the_cluster_can_satisfy_passes(cluster, strategy, nodes):
    from unirec_dist.training.pretrain import wait_for_resources

    cluster(*nodes)
    wait_for_resources(2, 1, False, 0, placement_strategy=strategy)


def test_placement_strategy_is_checked_by_the_config_loader(tmp_path):
    assert DistributedSection().placement_strategy == "PACK"
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: x\n")
    with pytest.raises(ConfigError, match="placement_strategy.*STRICT_SPREAD"):
        load_pretrain_config(cfg, ["distributed.placement_strategy=STRICT_SPREADS"])


def test_workers_failed_names_the_lost_worker_and_that_no_checkpoint_exists(tmp_path):
    """The cause, not its echo: the dead worker before the connection reset it caused on the other;
    no checkpoint reported (Ray wrote no snapshot): said so."""
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError

    from unirec_dist.training.pretrain import workers_failed

    dist = DistributedSection(max_failures=2)
    error = WorkerGroupError("...", {0: RuntimeError("Traceback ...\nRuntimeError: gloo: Connection reset by peer"),
                                     1: ActorDiedError()})
    (tmp_path / "debug").mkdir()
    e = workers_failed(error, dist, tmp_path / "debug", tmp_path / "checkpoints")
    assert str(e) == ("the training workers failed 3 times (distributed.max_failures: 2); last error: worker 1 was "
                      "lost with its process or node (ActorDiedError); no checkpoint was written before it")
    assert not (tmp_path / "checkpoints").exists()
    # a worker's own exception: the last line of its traceback
    error = WorkerGroupError("...", {1: RuntimeError("Traceback ...\n  File x\nValueError: bad batch")})
    assert "; last error: ValueError: bad batch; " in str(workers_failed(error, dist, tmp_path / "debug", tmp_path / "c"))


def test_the_commands_layer_words_the_flags(tmp_path, capsys, monkeypatch):
    """The library names the config key or says what to do; `unirec pretrain` names its flags:
    --workers for a bad count, --resume for a run that ended with a checkpoint to continue from."""
    from unirec_dist.cli import main
    from unirec_dist.training import pretrain as P

    debug = "configs/pretrain/debug.yaml"
    assert main(["pretrain", "--config", debug, "--workers", "0", f"trainer.out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers: must be >= 1, got 0"
    with pytest.raises(ConfigError, match=r"^distributed\.workers: must be >= 1, got 0$"):
        P.pretrain(load_pretrain_config(debug, [f"trainer.out_dir={tmp_path}"]), workers=0)

    for resumable, tail in ((True, "; the same command with --resume continues from it"), (False, "")):
        def fail(*args, resumable=resumable, **kwargs):
            raise P.WorkersFailedError("the training workers failed; last good checkpoint: c", resumable=resumable)

        monkeypatch.setattr(P, "pretrain", fail)
        assert main(["pretrain", "--config", debug, f"trainer.out_dir={tmp_path}"]) == 2
        assert capsys.readouterr().err.strip() == f"error: the training workers failed; last good checkpoint: c{tail}"


def test_link_or_copy_links_on_one_filesystem_and_copies_where_links_are_refused(tmp_path, monkeypatch):
    """The final checkpoint is published as hard links to Ray's copy; where the filesystem refuses
    links (another device), a real copy, never a missing file."""
    import errno
    import os

    from unirec_dist.training import pretrain

    src = tmp_path / "shard.distcp"
    src.write_bytes(b"\x00" * 1000)
    pretrain.link_or_copy(str(src), str(tmp_path / "linked"))
    assert os.path.samefile(src, tmp_path / "linked") and src.stat().st_nlink == 2

    def refuse(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(pretrain.os, "link", refuse)
    pretrain.link_or_copy(str(src), str(tmp_path / "copied"))
    assert (tmp_path / "copied").read_bytes() == src.read_bytes()
    assert not os.path.samefile(src, tmp_path / "copied")
