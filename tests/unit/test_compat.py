"""Every private torch/Lightning/Ray API in unirec_dist.compat still is what we use it as.

Pinned: compat.CHECKED_AGAINST must equal the versions in requirements/ and pyproject.toml and
the installed ones, so an upgrade fails here first, by name; each API then gets a check of the
behaviour we rely on.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from unirec_dist.compat import CHECKED_AGAINST

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    texts = [(REPO / "requirements" / f).read_text() for f in ("cpu.txt", "cuda.txt", "torchrec.txt")]
    texts.append((REPO / "pyproject.toml").read_text())
    for text in texts:
        for name, ver in re.findall(r'^\s*"?(torch|torchrec|lightning|ray)(?:\[[^\]]*\])?==([\w.]+)', text, re.M):
            pins.setdefault(name, set()).add(ver)
    return pins


def test_compat_was_checked_against_the_pinned_and_installed_versions():
    pins = _pins()
    for name, ver in CHECKED_AGAINST.items():
        assert pins.get(name) == {ver}, (
            f"{name} is pinned to {sorted(pins.get(name, []))} but unirec_dist/compat was checked against {ver}: "
            "re-check every private API listed in unirec_dist/compat/__init__.py, then update CHECKED_AGAINST")
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == ver, f"installed {name} {installed}, unirec_dist/compat was checked against {ver}"


# -- torch ---------------------------------------------------------------------------------------
def test_init_optim_state_creates_adam_moments():
    from unirec_dist.compat.torch_api import init_optim_state

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    assert not opt.state
    init_optim_state(opt)
    assert set(opt.state[p]) >= {"exp_avg", "exp_avg_sq", "step"}
    assert torch.equal(p.detach(), torch.ones(3))   # zero grads: the weights did not move


def test_apply_optimizer_in_backward_steps_inside_backward():
    from unirec_dist.compat.torch_api import apply_optimizer_in_backward

    emb = torch.nn.Embedding(4, 2)
    before = emb.weight.detach().clone()
    apply_optimizer_in_backward(torch.optim.SGD, emb.parameters(), {"lr": 1.0})
    emb(torch.tensor([1])).sum().backward()
    assert not torch.equal(emb.weight.detach()[1], before[1])   # updated by backward, no step() call
    assert torch.equal(emb.weight.detach()[0], before[0])
    assert emb.weight._in_backward_optimizers   # what torchrec's in_backward_optimizer_filter reads


def test_dcp_metadata_pickles_only_the_private_globals_we_allow(tmp_path):
    """A DCP .metadata file written by this torch references no private global beyond
    dcp_metadata_globals(), and each of those resolves to the object the allow-list names."""
    import torch.distributed.checkpoint as dcp

    from unirec_dist.compat.torch_api import dcp_metadata_globals

    dcp.save({"w": torch.zeros(2, 3), "n": {"x": 1}}, checkpoint_id=tmp_path, no_dist=True)
    seen: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(tmp_path / ".metadata", "rb") as f:
        Recorder(f).load()
    allowed = dcp_metadata_globals()
    private = {k for k in seen if k[1].startswith("_")}
    assert private <= set(allowed), f"DCP now pickles private globals {sorted(private - set(allowed))}"
    for (module, name), obj in allowed.items():
        assert getattr(sys.modules[module], name) is obj


def test_sharded_tensor_and_dtensor_offset():
    """ShardedTensor is still the class TorchRec's state_dict hands out; dtensor_global_offset
    gives a DTensor shard's start (one gloo process in a subprocess: no process group leaks)."""
    from unirec_dist.compat.torch_api import ShardedTensor

    assert inspect.isclass(ShardedTensor) and hasattr(ShardedTensor, "local_shards")
    code = textwrap.dedent("""
        import torch, torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        from unirec_dist.compat.torch_api import dtensor_global_offset
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        t = distribute_tensor(torch.ones(4, 2), init_device_mesh("cpu", (1,)), [Shard(0)])
        print(dtensor_global_offset(t))
        dist.destroy_process_group()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(0, 0)"


# -- Lightning -----------------------------------------------------------------------------------
def test_spawn_launcher_is_replaced_and_keeps_lightnings_hook_signature():
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput

    from unirec_dist.compat.lightning_api import NoWeightsHandBackLauncher, SpawnWithoutWeightsHandBack

    assert _WorkerOutput._fields == ("best_model_path", "weights_path", "trainer_state", "trainer_results", "extra")
    ours = inspect.signature(NoWeightsHandBackLauncher._collect_rank_zero_results)
    theirs = inspect.signature(_MultiProcessingLauncher._collect_rank_zero_results)
    assert list(ours.parameters) == list(theirs.parameters)
    assert hasattr(_MultiProcessingLauncher, "get_extra_results")

    class Strategy(SpawnWithoutWeightsHandBack, DDPStrategy):
        pass

    from lightning.fabric.plugins.environments import LightningEnvironment

    s = Strategy(start_method="spawn", cluster_environment=LightningEnvironment())
    s._configure_launcher()
    assert type(s.launcher) is NoWeightsHandBackLauncher
    assert s.launcher._strategy is s


def test_train_loader_of_returns_the_loader_fit_iterates():
    import lightning as L

    from unirec_dist.compat.lightning_api import train_loader_of

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)
    seen = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            seen.append(train_loader_of(self))
            return self.lin(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    m = Module()
    assert train_loader_of(m) is None
    L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(m, loader)
    assert seen == [loader]


# -- Ray -----------------------------------------------------------------------------------------
def test_print_worker_logs_is_looked_up_by_name_and_replaced():
    import ray._private.worker as rw

    from unirec_dist.compat.ray_api import replace_print_worker_logs

    assert list(inspect.signature(rw.print_worker_logs).parameters) == ["data", "print_file", "ignore_prefix"]
    # Ray's log listener calls it through the module global, so replacing the attribute takes effect
    assert "print_worker_logs" in rw.print_to_stdstream.__code__.co_names
    original = rw.print_worker_logs
    earlier = rw.__dict__.pop("_unirec_original_print_worker_logs", None)   # a pretrain run in this process
    got = []
    try:
        assert replace_print_worker_logs(lambda data, f, ignore_prefix=False: got.append(data["lines"]))
        assert replace_print_worker_logs(lambda *a: None)   # later calls keep the first
        rw.print_to_stdstream({"pid": 1, "is_err": False, "lines": ["hello"]}, False)
        assert got == [["hello"]]
    finally:
        rw.print_worker_logs = original
        rw.__dict__.pop("_unirec_original_print_worker_logs", None)
        if earlier is not None:
            rw._unirec_original_print_worker_logs = earlier


# -- torchrec ------------------------------------------------------------------------------------
def test_train_pipeline_backward_is_one_overridable_call_and_lists_its_modules():
    """TrainPipelineSparseDist.progress runs backward through `self._backward(losses)` (what
    sparse_dist_pipeline overrides) and keeps the rewritten modules in `_pipelined_modules`.
    (That the override really routes backward, and what gets pipelined, is checked on 2 gloo
    processes: tests/distributed/test_train_pipeline.py.)"""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from unirec_dist.compat.torchrec_api import pipelined_module_names, sparse_dist_pipeline

    assert "self._backward(losses)" in inspect.getsource(TrainPipelineSparseDist.progress)
    assert "_pipelined_modules" in inspect.getsource(TrainPipelineSparseDist.__init__)
    seen = []
    pipe = sparse_dist_pipeline(torch.nn.Linear(2, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                                torch.device("cpu"), lambda b: (b.sum(), None), seen.append)
    pipe._backward(torch.ones(()))
    assert len(seen) == 1 and pipelined_module_names(pipe) == []
