"""Library logging: `logging` with a rank-0 filter; the library never prints."""
from __future__ import annotations

import logging
import os

_NOISY = {
    "torch.fx._symbolic_trace": logging.ERROR,
    "fbgemm_gpu": logging.WARNING,
    "torchrec": logging.WARNING,
    "ray": logging.WARNING,
}


class RankZeroFilter(logging.Filter):
    """Drop records from ranks other than 0 (rank from RANK, as torchrun/Ray Train set it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return int(os.environ.get("RANK", "0")) == 0


def quiet_noisy_loggers() -> None:
    """Silence fbgemm/torchrec/fx chatter (fbgemm's 'Successfully loaded' INFO lines in every
    process, torch.fx tracing notes)."""
    for name, level in _NOISY.items():
        logging.getLogger(name).setLevel(level)


def setup_cli_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RankZeroFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("unirec_dist").setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_noisy_loggers()
