"""Every private (underscore) API of torch, TorchRec, Lightning and Ray that unirec_dist uses, in one place.

Each one is used because the public API lacks what we need (the reason sits beside it). They
are split by library so that importing one does not import the others (DCP loading in serving
must not pay for Lightning):

    torch_api       init_optim_state, apply_optimizer_in_backward, ShardedTensor,
                    dtensor_global_offset, dcp_metadata_globals
    lightning_api   SpawnWithoutWeightsHandBack (+ its launcher), train_loader_of
    ray_api         replace_print_worker_logs
    torchrec_api    sparse_dist_pipeline (its backward), pipelined_module_names

tests/unit/test_compat.py checks each against the versions in CHECKED_AGAINST, which must equal
the pins in requirements/ and pyproject.toml: an upgrade fails there, naming the API that moved,
instead of deep inside a training run. After re-checking each API against the new version,
update CHECKED_AGAINST.
"""
from __future__ import annotations

CHECKED_AGAINST = {"torch": "2.13.0", "torchrec": "1.8.0", "lightning": "2.6.6", "ray": "2.60.0"}
